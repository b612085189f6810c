"""Harmonic (Backus) decomposition of crystal tensors into physically named, orientation-covariant parts.

``harmonic_parts(T, kind)`` returns a frozen dataclass per kind whose Cartesian pieces sum back to ``T``
exactly (to float rounding) and whose named quantities are the classical ones:

* ``dielectric``: the isotropic scalar ``eps_kk / 3`` and the deviator ``eps - (eps_kk/3) 1``;
* ``elastic`` (Backus 1970): Voigt bulk and shear moduli ``K_V = C_iijj / 9``,
  ``G_V = (3 C_ijij - C_iijj) / 30``; the deviators of the dilatational trace ``d_ij = C_ijkk`` and of the
  Voigt trace ``v_ij = C_ikjk``; the totally symmetric, traceless fourth-order harmonic tensor ``H``;
* ``piezoelectric`` (and ``piezoelectric_d``): the vectors ``u_i = e_ikk`` and ``w_i = e_kki``; the
  symmetric traceless pseudo-deviator ``D = sym(eps_pij e_ijk)``; the third-order harmonic tensor.

Everything is computed from the irreps coordinates ``x = decompose(T)`` with fixed matrices, so a batch of
any size costs a few matrix products. The exact relations to e3nn's blocks (derived in ``docs/harmonic.md``,
checked in ``tests/core/test_harmonic.py``), with ``Y_l`` the e3nn real harmonic basis
(the top irrep of the totally symmetric rank-l basis):

* elastic: ``x[0e[0]] = C_iijj/3 = 3 K_V``, ``x[0e[1]] = (C_ijij - C_iijj/3)/sqrt(5) = 2 sqrt(5) G_V``,
  ``x[2e[0]] = sqrt(2/3) Y_2 d'``, ``x[2e[1]] = (6 Y_2 v' - 4 Y_2 d') / sqrt(21)``, ``x[4e] = Y_4 H``;
* piezoelectric: ``x[1o[0]] = w / sqrt(2)``, ``x[1o[1]] = (w - 2 u) / sqrt(10)``, ``x[2o] = sqrt(2/3) Y_2 D``,
  ``x[3o] = Y_3 h``;
* dielectric: ``x[0e] = eps_kk / sqrt(3)``, ``x[2e] = Y_2 eps'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .backend import as_numpy
from .basis import blocks, float_basis
from .decomposition import decompose
from .kinds import KIND_REQUIRED, TensorKind, get_kind, renamed_keyword, required_kind

__all__ = ["harmonic_parts", "DielectricParts", "ElasticParts", "PiezoelectricParts", "levi_civita"]

_SQ2, _SQ3, _SQ5, _SQ10, _SQ21 = (float(np.sqrt(v)) for v in (2.0, 3.0, 5.0, 10.0, 21.0))


def levi_civita() -> np.ndarray:
    """The Levi-Civita symbol ``eps_ijk`` as a float64 ``(3, 3, 3)`` array."""
    e = np.zeros((3, 3, 3))
    e[0, 1, 2] = e[1, 2, 0] = e[2, 0, 1] = 1.0
    e[0, 2, 1] = e[2, 1, 0] = e[1, 0, 2] = -1.0
    return e


_HARMONIC_FORMULA = {2: "ij=ji", 3: "ijk=jik=ikj", 4: "ijkl=jikl=ikjl=ijlk"}


@lru_cache(maxsize=None)
def _Y(l: int) -> np.ndarray:
    """``Y_l`` ``(2l+1, 3**l)``: the rank-l harmonic (totally symmetric traceless) tensors in e3nn's real basis,
    the top irrep (last rows) of the totally symmetric rank-l basis (same as ``wigner.harmonic_basis``)."""
    Y = np.array(float_basis(_HARMONIC_FORMULA[l])[-(2 * l + 1):])
    Y.setflags(write=False)
    return Y


def _from_Y2(c: np.ndarray) -> np.ndarray:
    """5 real-SH coordinates -> symmetric traceless 3x3 matrices, ``(..., 5) -> (..., 3, 3)``."""
    return (c @ _Y(2)).reshape(*c.shape[:-1], 3, 3)


def _to_Y2(a: np.ndarray) -> np.ndarray:
    return a.reshape(*a.shape[:-2], 9) @ _Y(2).T


def _compose_block(x: np.ndarray, kind: str, name: str) -> np.ndarray:
    """Cartesian tensor of one irrep block alone: ``Q[block]^T x[block]``."""
    k = get_kind(kind)
    b = next(b for b in blocks(k) if b.name == name)
    Q = float_basis(k)
    return (x[..., b.slice] @ Q[b.slice]).reshape(*x.shape[:-1], *k.cartesian_shape)


def _block_coords(x: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    return {b.name: x[..., b.slice] for b in blocks(kind)}


class _Parts:
    """Shared behaviour of the per-kind dataclasses (they define ``coords`` and ``_kind``)."""

    coords: np.ndarray
    _kind: str = ""

    @property
    def kind(self) -> str:
        return self._kind

    def block_coords(self) -> dict[str, np.ndarray]:
        """The e3nn irrep blocks of the coordinates, e.g. ``{"0e[0]": (..., 1), ..., "4e": (..., 9)}``."""
        return _block_coords(self.coords, self._kind)

    def block_parts(self) -> dict[str, np.ndarray]:
        """Cartesian tensor of each e3nn irrep block; mutually orthogonal (Frobenius), they sum to ``T``."""
        return {b.name: _compose_block(self.coords, self._kind, b.name) for b in blocks(self._kind)}

    def cartesian_parts(self) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_cartesian(self) -> np.ndarray:
        """The sum of :meth:`cartesian_parts`: the original tensor (symmetric part), ``(..., 3, ..., 3)``."""
        return sum(self.cartesian_parts().values())


@dataclass(frozen=True, eq=False)
class DielectricParts(_Parts):
    """``eps = iso * 1 + deviator`` for symmetric rank-2 tensors.

    Attributes:
        isotropic: ``(...,)`` mean ``eps_kk / 3`` (same unit as the tensor).
        deviator: ``(..., 3, 3)`` symmetric traceless ``eps - iso * 1``.
        coords: ``(..., 6)`` irreps coordinates (``0e`` = ``sqrt(3) iso``, ``2e`` = ``Y_2 deviator``).
    """

    isotropic: np.ndarray
    deviator: np.ndarray
    coords: np.ndarray
    _kind: str = "dielectric"

    def cartesian_parts(self) -> dict[str, np.ndarray]:
        """``{"isotropic": iso * 1, "deviator": deviator}``; orthogonal, summing to ``eps``."""
        iso = self.isotropic[..., None, None] * np.eye(3)
        return {"isotropic": iso, "deviator": np.array(self.deviator)}

    def irrep(self, name: str) -> np.ndarray:
        """The irrep coordinates of a named part: ``"isotropic"`` -> ``0e`` (1), ``"deviator"`` -> ``2e`` (5)."""
        x = self.block_coords()
        table = {"isotropic": x["0e"], "deviator": x["2e"]}
        if name not in table:
            raise ValueError(f"unknown dielectric part {name!r}; valid: {sorted(table)}")
        return table[name]


@dataclass(frozen=True, eq=False)
class ElasticParts(_Parts):
    """Backus (1970) harmonic decomposition of elastic stiffness tensors.

    ``C = K d(x)d + 2 G K_dev + (d(x)a + a(x)d) + B(b) + H`` with ``d`` the identity,
    ``K_dev = I_sym - d(x)d/3``, ``B(b)_ijkl = d_ik b_jl + d_jl b_ik + d_il b_jk + d_jk b_il``,
    ``a = (5 d' - 4 v')/7`` and ``b = (3 v' - 2 d')/7`` (see ``docs/harmonic.md``).

    Attributes:
        bulk_modulus: ``(...,)`` Voigt bulk modulus ``K_V = C_iijj / 9`` (tensor unit, e.g. GPa).
        shear_modulus: ``(...,)`` Voigt shear modulus ``G_V = (3 C_ijij - C_iijj) / 30``.
        dilatational_deviator: ``(..., 3, 3)`` ``d' = dev(C_ijkk)``.
        voigt_deviator: ``(..., 3, 3)`` ``v' = dev(C_ikjk)``.
        harmonic: ``(..., 3, 3, 3, 3)`` totally symmetric traceless ``H``.
        coords: ``(..., 21)`` irreps coordinates in e3nn's layout ``2x0e+2x2e+1x4e``.
    """

    bulk_modulus: np.ndarray
    shear_modulus: np.ndarray
    dilatational_deviator: np.ndarray
    voigt_deviator: np.ndarray
    harmonic: np.ndarray
    coords: np.ndarray
    _kind: str = "elastic"

    @property
    def a(self) -> np.ndarray:
        """``a = (5 d' - 4 v') / 7``: the deviator in the ``d(x)a + a(x)d`` term."""
        return (5.0 * self.dilatational_deviator - 4.0 * self.voigt_deviator) / 7.0

    @property
    def b(self) -> np.ndarray:
        """``b = (3 v' - 2 d') / 7``: the deviator in the ``B(b)`` term."""
        return (3.0 * self.voigt_deviator - 2.0 * self.dilatational_deviator) / 7.0

    def isotropic(self) -> np.ndarray:
        """The isotropic part ``K d(x)d + 2 G K_dev`` ``(..., 3, 3, 3, 3)``: the closest isotropic tensor."""
        p = self.cartesian_parts()
        return p["bulk"] + p["shear"]

    def cartesian_parts(self) -> dict[str, np.ndarray]:
        """Five Cartesian pieces summing to ``C``: ``bulk``, ``shear``, ``deviator_a``, ``deviator_b``, ``harmonic``.

        All pairs are Frobenius-orthogonal except ``deviator_a`` / ``deviator_b`` (both carry ``l = 2``;
        their sum is orthogonal to the rest). :meth:`block_parts` gives a fully orthogonal split.
        """
        d = np.eye(3)
        dd = np.einsum("ij,kl->ijkl", d, d)
        isym = 0.5 * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d))
        K = self.bulk_modulus[..., None, None, None, None]
        G = self.shear_modulus[..., None, None, None, None]
        a, b = self.a, self.b
        da = np.einsum("ij,...kl->...ijkl", d, a)
        Bb = (np.einsum("ik,...jl->...ijkl", d, b) + np.einsum("jl,...ik->...ijkl", d, b)
              + np.einsum("il,...jk->...ijkl", d, b) + np.einsum("jk,...il->...ijkl", d, b))
        return {
            "bulk": K * dd,
            "shear": 2.0 * G * (isym - dd / 3.0),
            "deviator_a": da + np.swapaxes(np.swapaxes(da, -4, -2), -3, -1),
            "deviator_b": Bb,
            "harmonic": np.array(self.harmonic),
        }

    def irrep(self, name: str) -> np.ndarray:
        """Irrep coordinates of a named part in e3nn's real basis.

        ``"bulk"`` -> ``0e[0]`` (``3 K``), ``"shear"`` -> ``0e[1]`` (``2 sqrt(5) G``),
        ``"dilatational_deviator"`` / ``"voigt_deviator"`` -> ``Y_2 d'`` / ``Y_2 v'`` (5 each),
        ``"harmonic"`` -> ``4e`` (9).
        """
        x = self.block_coords()
        table = {"bulk": x["0e[0]"], "shear": x["0e[1]"], "harmonic": x["4e"]}
        if name == "dilatational_deviator":
            return _to_Y2(self.dilatational_deviator)
        if name == "voigt_deviator":
            return _to_Y2(self.voigt_deviator)
        if name not in table:
            raise ValueError(
                f"unknown elastic part {name!r}; valid: "
                f"{sorted([*table, 'dilatational_deviator', 'voigt_deviator'])}"
            )
        return table[name]


@dataclass(frozen=True, eq=False)
class PiezoelectricParts(_Parts):
    """Harmonic decomposition of ``e_ijk = e_ikj`` (polar rank 3).

    ``e = A(p) + B(q) + E(D) + h`` with ``A(p)_ijk = p_i d_jk``, ``B(q)_ijk = d_ij q_k + d_ik q_j``,
    ``E(D)_ijk = (eps_ijm D_mk + eps_ikm D_mj) / 3``, ``p = (2u - w)/5``, ``q = (3w - u)/10``.

    Attributes:
        vector_u: ``(..., 3)`` ``u_i = e_ikk``.
        vector_w: ``(..., 3)`` ``w_i = e_kki``.
        pseudo_deviator: ``(..., 3, 3)`` symmetric traceless ``D = sym(eps_pij e_ijk)`` (an axial tensor).
        harmonic: ``(..., 3, 3, 3)`` totally symmetric traceless part ``h``.
        coords: ``(..., 18)`` irreps coordinates, e3nn layout ``2x1o+1x2o+1x3o``.
    """

    vector_u: np.ndarray
    vector_w: np.ndarray
    pseudo_deviator: np.ndarray
    harmonic: np.ndarray
    coords: np.ndarray
    _kind: str = "piezoelectric"

    @property
    def p(self) -> np.ndarray:
        """``p = (2u - w)/5``: the vector in ``p_i d_jk``."""
        return (2.0 * self.vector_u - self.vector_w) / 5.0

    @property
    def q(self) -> np.ndarray:
        """``q = (3w - u)/10``: the vector in ``d_ij q_k + d_ik q_j``."""
        return (3.0 * self.vector_w - self.vector_u) / 10.0

    def cartesian_parts(self) -> dict[str, np.ndarray]:
        """Four pieces summing to ``e``: ``vector_p``, ``vector_q``, ``pseudo_deviator``, ``harmonic``.

        All pairs orthogonal except ``vector_p`` / ``vector_q`` (both ``l = 1``).
        """
        d = np.eye(3)
        eps = levi_civita()
        p, q, D = self.p, self.q, self.pseudo_deviator
        A = np.einsum("...i,jk->...ijk", p, d)
        B = np.einsum("ij,...k->...ijk", d, q) + np.einsum("ik,...j->...ijk", d, q)
        E = np.einsum("ijm,...mk->...ijk", eps, D)
        E = (E + np.swapaxes(E, -1, -2)) / 3.0
        return {"vector_p": A, "vector_q": B, "pseudo_deviator": E, "harmonic": np.array(self.harmonic)}

    def irrep(self, name: str) -> np.ndarray:
        """Irrep coordinates of a named part in e3nn's real basis (``1o`` vectors are (x, y, z)).

        ``"vector_u"`` / ``"vector_w"`` -> the vector itself (3), ``"pseudo_deviator"`` -> ``Y_2 D`` (5),
        ``"harmonic"`` -> ``3o`` (7).
        """
        if name == "vector_u":
            return np.array(self.vector_u)
        if name == "vector_w":
            return np.array(self.vector_w)
        if name == "pseudo_deviator":
            return _to_Y2(self.pseudo_deviator)
        if name == "harmonic":
            return self.block_coords()["3o"]
        raise ValueError(
            f"unknown piezoelectric part {name!r}; valid: ['harmonic', 'pseudo_deviator', 'vector_u', 'vector_w']"
        )


@renamed_keyword("symmetrize", "symmetrize_indices")
def harmonic_parts(T: Any, kind: str | TensorKind = KIND_REQUIRED, *, symmetrize_indices: bool = False):
    """Harmonic decomposition of a tensor (or a batch) into its physically named parts.

    Args:
        T: Cartesian ``(..., 3, ..., 3)`` or the kind's Voigt form, a batch of any shape; numpy, torch
            (converted to float64 numpy) or pymatgen tensors.
        kind: ``"elastic"`` (``"stiffness"``), ``"piezoelectric"`` (``"piezo"``, ``"piezoelectric_d"``) or
            ``"dielectric"``. Required; leaving it out still means ``"elastic"`` with a DeprecationWarning
            (removed in the next release).
        symmetrize_indices: project a tensor lacking the kind's index symmetry instead of raising.

    Returns:
        :class:`ElasticParts`, :class:`PiezoelectricParts` or :class:`DielectricParts` with batch shape ``...``.

    Raises:
        ValueError: an unsupported kind, a wrong shape, non-finite entries or an asymmetric tensor.
    """
    kind = required_kind(kind, "harmonic_parts(T, kind)")
    k = get_kind(kind)
    if k.name not in ("elastic", "piezoelectric", "piezoelectric_d", "dielectric"):
        raise ValueError(
            f"harmonic_parts supports kinds 'elastic', 'piezoelectric', 'piezoelectric_d' and 'dielectric', "
            f"not {kind!r}" + ("; invert a compliance to a stiffness first" if k.name == "compliance" else "")
        )
    x = decompose(as_numpy(T), k.name, symmetrize_indices=symmetrize_indices)
    x = np.asarray(x, dtype=np.float64)
    if k.name == "dielectric":
        iso = x[..., 0] / _SQ3
        return DielectricParts(iso, _from_Y2(x[..., 1:6]), x)
    if k.name == "elastic":
        K = x[..., 0] / 3.0
        G = x[..., 1] / (2.0 * _SQ5)
        yd = x[..., 2:7] / np.sqrt(2.0 / 3.0)
        yv = (x[..., 7:12] * _SQ21 + 4.0 * yd) / 6.0
        H = (x[..., 12:21] @ _Y(4)).reshape(*x.shape[:-1], 3, 3, 3, 3)
        return ElasticParts(K, G, _from_Y2(yd), _from_Y2(yv), H, x)
    w = x[..., 0:3] * _SQ2
    u = (w - x[..., 3:6] * _SQ10) / 2.0
    D = _from_Y2(x[..., 6:11] / np.sqrt(2.0 / 3.0))
    h = (x[..., 11:18] @ _Y(3)).reshape(*x.shape[:-1], 3, 3, 3)
    return PiezoelectricParts(u, w, D, h, x, k.name)
