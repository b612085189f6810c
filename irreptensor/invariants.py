"""Orientation-independent numbers of crystal tensors.

* :func:`block_norms` -- the norm of every irrep block of the coordinates (invariant under all rotations and
  reflections, for any kind);
* :func:`vrh_moduli` -- Voigt, Reuss and Hill bulk and shear moduli of elastic stiffness tensors (the same
  definitions as pymatgen's ``ElasticTensor.k_voigt`` ... ``g_vrh``);
* :func:`universal_anisotropy` -- Ranganathan & Ostoja-Starzewski (2008) ``A^U = 5 G_V/G_R + K_V/K_R - 6``;
* :func:`log_euclidean_anisotropy` -- Kube (2016) ``A^L = sqrt(ln(K_V/K_R)^2 + 5 ln(G_V/G_R)^2)``;
* :func:`distance_from_isotropy` -- the Frobenius distance to the closest isotropic tensor (the norm of the
  non-scalar irrep blocks), absolute or relative to ``|T|``.

All are vectorized over leading batch dimensions and take Cartesian, Voigt (named kinds) or pymatgen input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import as_numpy
from .basis import blocks
from .decomposition import decompose
from .kinds import KIND_REQUIRED, TensorKind, get_kind, renamed_keyword, required_kind

__all__ = [
    "block_norms",
    "vrh_moduli",
    "ElasticModuli",
    "universal_anisotropy",
    "log_euclidean_anisotropy",
    "distance_from_isotropy",
]


def _coords(T: Any, kind: str, symmetrize_indices: bool) -> np.ndarray:
    return np.asarray(decompose(as_numpy(T), kind, symmetrize_indices=symmetrize_indices), dtype=np.float64)


def _norm(x: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis, computed on ``x / max|x|`` so that the squares of huge entries do
    not overflow to inf and those of tiny entries do not lose their bits to underflow (plain
    ``np.linalg.norm`` gives inf for a tensor with an entry of 1e160 and ~1e-4 relative error at 1e-160)."""
    m = np.max(np.abs(x), axis=-1, keepdims=True, initial=0.0)
    m = np.where(m > 0, m, 1.0)
    return np.linalg.norm(x / m, axis=-1) * m[..., 0]


@renamed_keyword("symmetrize", "symmetrize_indices")
def block_norms(T: Any, kind: str | TensorKind = KIND_REQUIRED, *, symmetrize_indices: bool = False) -> dict[str, np.ndarray]:
    """Euclidean norm of each irrep block, e.g. ``{"0e[0]": (...), "0e[1]": ..., "2e[0]": ..., "4e": ...}``.

    The norms are invariant under every rotation (and reflection) of the tensor, and
    ``sum(n**2) == |T|_F**2``. The split of the repeated ``2e`` copies follows e3nn's gauge; the
    gauge-free invariant of a repeated irrep is its Gram matrix, see :func:`irreptensor.harmonic_parts`.

    Returns:
        dict block name -> ``(...,)`` float64 array (unit of the tensor).
    """
    kind = required_kind(kind, "block_norms(T, kind)")
    x = _coords(T, kind, symmetrize_indices)
    return {b.name: _norm(x[..., b.slice]) for b in blocks(get_kind(kind))}


@dataclass(frozen=True, eq=False)
class ElasticModuli:
    """Voigt/Reuss/Hill moduli, each ``(...,)`` in the stiffness unit (GPa for the shipped data).

    Attributes:
        k_voigt, g_voigt: upper (Voigt) bounds ``C_iijj/9``, ``(3 C_ijij - C_iijj)/30``.
        k_reuss, g_reuss: lower (Reuss) bounds ``1/S_iijj`` and ``15 / (4 (S11+S22+S33) - 4 (S12+S13+S23)
            + 3 (S44+S55+S66))`` from the Voigt compliance ``S = C^-1`` (6x6).
        k_vrh, g_vrh: Hill averages ``(voigt + reuss)/2``.
    """

    k_voigt: np.ndarray
    g_voigt: np.ndarray
    k_reuss: np.ndarray
    g_reuss: np.ndarray

    @property
    def k_vrh(self) -> np.ndarray:
        return 0.5 * (self.k_voigt + self.k_reuss)

    @property
    def g_vrh(self) -> np.ndarray:
        return 0.5 * (self.g_voigt + self.g_reuss)


@renamed_keyword("symmetrize", "symmetrize_indices")
def vrh_moduli(C: Any, *, symmetrize_indices: bool = False) -> ElasticModuli:
    """Voigt, Reuss and Hill bulk and shear moduli of elastic stiffness tensors.

    Args:
        C: ``(..., 3, 3, 3, 3)`` or Voigt ``(..., 6, 6)`` stiffness (or pymatgen ``ElasticTensor``).

    Raises:
        ValueError: a stiffness numpy cannot invert (singular: no compliance, so no Reuss bound; names the batch
            index), or the errors of ``decompose``. Nearly singular stiffnesses give Reuss moduli near 0.
    """
    from .voigt import to_voigt

    x = _coords(C, "elastic", symmetrize_indices)
    k_v = x[..., 0] / 3.0
    g_v = x[..., 1] / (2.0 * np.sqrt(5.0))
    from .decomposition import compose

    V = np.asarray(to_voigt(compose(x, "elastic"), "elastic"))
    batch = V.shape[:-2]
    flat = V.reshape(-1, 6, 6)
    try:
        S = np.linalg.inv(flat)
        bad = ~np.isfinite(S).all((1, 2))
    except np.linalg.LinAlgError:  # an exactly singular matrix somewhere in the batch
        S, bad = None, np.ones(len(flat), dtype=bool)
    if bad.any():
        cond = np.linalg.cond(flat[bad])
        i = int(np.flatnonzero(bad)[int(np.argmax(cond))] if S is not None else _first_singular(flat))
        raise ValueError(
            f"elastic stiffness is singular (condition number {np.linalg.cond(flat[i]):.3g}) at batch index "
            f"{tuple(int(v) for v in np.unravel_index(i, batch)) if batch else ()}: the Reuss moduli need its inverse"
        )
    S = S.reshape(V.shape)
    d = np.diagonal(S, axis1=-2, axis2=-1)
    s_diag = d[..., 0] + d[..., 1] + d[..., 2]
    s_off = S[..., 0, 1] + S[..., 1, 2] + S[..., 0, 2]
    s_shear = d[..., 3] + d[..., 4] + d[..., 5]
    k_r = 1.0 / (s_diag + 2.0 * s_off)
    g_r = 15.0 / (4.0 * s_diag - 4.0 * s_off + 3.0 * s_shear)
    return ElasticModuli(k_v, g_v, k_r, g_r)


def _first_singular(flat: np.ndarray) -> int:
    """Index of the first matrix of ``flat`` ``(n, 6, 6)`` that numpy cannot invert."""
    for i, m in enumerate(flat):
        try:
            np.linalg.inv(m)
        except np.linalg.LinAlgError:
            return i
    return 0  # pragma: no cover - only called after a LinAlgError


@renamed_keyword("symmetrize", "symmetrize_indices")
def universal_anisotropy(C: Any, *, symmetrize_indices: bool = False) -> np.ndarray:
    """Universal anisotropy index ``A^U = 5 G_V/G_R + K_V/K_R - 6`` (0 exactly for isotropic), ``(...,)``."""
    m = vrh_moduli(C, symmetrize_indices=symmetrize_indices)
    return 5.0 * m.g_voigt / m.g_reuss + m.k_voigt / m.k_reuss - 6.0


@renamed_keyword("symmetrize", "symmetrize_indices")
def log_euclidean_anisotropy(C: Any, *, symmetrize_indices: bool = False) -> np.ndarray:
    """Kube's (2016) log-Euclidean index ``A^L = sqrt(ln(K_V/K_R)^2 + 5 ln(G_V/G_R)^2)``, ``(...,)``.

    Defined for positive-definite stiffnesses (all moduli positive); NaN otherwise.
    """
    m = vrh_moduli(C, symmetrize_indices=symmetrize_indices)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.log(m.k_voigt / m.k_reuss) ** 2 + 5.0 * np.log(m.g_voigt / m.g_reuss) ** 2)


@renamed_keyword("symmetrize", "symmetrize_indices")
def distance_from_isotropy(T: Any, kind: str | TensorKind = KIND_REQUIRED, *, relative: bool = True,
                           symmetrize_indices: bool = False) -> np.ndarray:
    """Frobenius distance from ``T`` to the closest isotropic tensor of the same kind, ``(...,)``.

    The isotropic tensors are exactly the span of the ``0e`` blocks, and the irreps basis is orthonormal,
    so the distance is the norm of all other blocks: ``|T - T_iso|_F``. With ``relative=True`` it is
    divided by ``|T|_F`` (0 for isotropic, 1 for a tensor without isotropic part such as any
    piezoelectric tensor; 0 for the zero tensor).
    """
    kind = required_kind(kind, "distance_from_isotropy(T, kind)")
    x = _coords(T, kind, symmetrize_indices)
    mask = np.ones(x.shape[-1], dtype=bool)
    for b in blocks(get_kind(kind)):
        if b.l == 0 and b.parity == 1:
            mask[b.slice] = False
    aniso = _norm(x[..., mask])
    if not relative:
        return aniso
    total = _norm(x)
    return np.divide(aniso, total, out=np.zeros_like(aniso), where=total > 0)
