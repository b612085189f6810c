"""Voigt and Mandel (Kelvin) notation for every named kind.

Voigt order is xx, yy, zz, yz, xz, xy (indices 1..6 in the literature, 0..5 here). The Voigt form
multiplies each Cartesian component by ``w**n``, where ``n`` is the number of shear (yz, xz, xy) Voigt
indices of the entry and ``w`` is the kind's weight: 1 for stiffness ``C_IJ = C_ijkl``, stress-charge
piezoelectric ``e_iJ = e_ijk`` and the dielectric 6-vector; 2 for compliance (``S_IJ = S_ijkl * 1, 2, 4``)
and strain-charge piezoelectric ``d_iJ = d_ijk * (1 or 2)``. Mandel/Kelvin notation uses ``w = sqrt(2)``
for every kind; it makes the map an isometry (Frobenius norm preserved) and the matrix of a fourth-rank
tensor a true second-rank tensor in 6 dimensions. See ``docs/conventions.md``.

Every function takes the array first and the kind second (``to_voigt(T, kind)``); the kind is required
(leaving it out still means ``"elastic"`` with a DeprecationWarning, for one release) and ``check`` is
keyword-only.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np

from .backend import as_float_array, check_finite, constant, take_last, to_numpy64
from .kinds import KIND_REQUIRED, VOIGT_PAIRS, TensorKind, get_kind, required_kind

__all__ = ["to_voigt", "from_voigt", "to_mandel", "from_mandel"]

_PAIR_INDEX = np.zeros((3, 3), dtype=int)
for _I, (_a, _b) in enumerate(VOIGT_PAIRS):
    _PAIR_INDEX[_a, _b] = _PAIR_INDEX[_b, _a] = _I


def _layout(k: TensorKind) -> tuple[str, ...]:
    """Which Cartesian axes are single ('v' = a vector index) and which are pairs ('p')."""
    return {"dielectric": ("p",), "piezoelectric": ("v", "p"), "piezoelectric_d": ("v", "p"),
            "elastic": ("p", "p"), "compliance": ("p", "p")}[k.name]


@lru_cache(maxsize=None)
def _maps(name: str, weight: float):
    """Index maps and weights between the flattened Cartesian form and the flattened Voigt form."""
    k = get_kind(name)
    layout = _layout(k)
    vshape = tuple(3 if s == "v" else 6 for s in layout)
    # Voigt entry -> one Cartesian position, and its weight
    to_idx, to_w = [], []
    for vi in product(*(range(n) for n in vshape)):
        cart, nshear = [], 0
        for s, i in zip(layout, vi):
            if s == "v":
                cart.append(i)
            else:
                cart.extend(VOIGT_PAIRS[i])
                nshear += i >= 3
        to_idx.append(np.ravel_multi_index(cart, (3,) * len(cart)))
        to_w.append(weight**nshear)
    # Cartesian position -> Voigt entry, and the weight to divide by
    from_idx, from_w = [], []
    for ci in product(range(3), repeat=k.rank):
        vi, pos, nshear = [], 0, 0
        for s in layout:
            if s == "v":
                vi.append(ci[pos])
                pos += 1
            else:
                I = _PAIR_INDEX[ci[pos], ci[pos + 1]]
                vi.append(I)
                nshear += I >= 3
                pos += 2
        from_idx.append(np.ravel_multi_index(vi, vshape))
        from_w.append(weight ** (-nshear))
    return vshape, np.array(to_idx), np.array(to_w, dtype=float), np.array(from_idx), np.array(from_w, dtype=float)


def _named(kind) -> TensorKind:
    k = get_kind(kind)
    if k.voigt_shape is None:
        raise ValueError(
            f"Voigt/Mandel notation is defined for the named kinds only, not for the formula {k.formula!r}"
        )
    return k


def cartesian_to_voigt(T: Any, k: TensorKind, weight: float, finite: bool = True):
    """``(..., 3, ..., 3) -> (..., *vshape)``; ``finite``: refuse NaN/inf in ``T`` (internal callers that
    have checked already pass False)."""
    T = as_float_array(T, "tensor")
    if tuple(T.shape[T.ndim - k.rank:]) != k.cartesian_shape:
        raise ValueError(
            f"{k.name} tensor must have trailing shape {k.cartesian_shape} (Cartesian), got shape {tuple(T.shape)}"
        )
    if finite:
        check_finite(T, f"{k.name} tensor T", k.rank)
    vshape, idx, w, _, _ = _maps(k.name, weight)
    batch = T.shape[: T.ndim - k.rank]
    flat = T.reshape(*batch, 3**k.rank)  # explicit size: -1 is ambiguous for an empty batch
    out = take_last(flat, idx) * constant(("voigt-w", k.name, weight), w, flat)
    return out.reshape(*batch, *vshape)


def voigt_to_cartesian(V: Any, k: TensorKind, weight: float, check: bool, finite: bool = True,
                       name: str = "Voigt form V"):
    """``(..., *vshape) -> (..., 3, ..., 3)``; ``check``: refuse an asymmetric 6x6 matrix; ``finite``: refuse
    NaN/inf (internal callers that check themselves pass False); ``name`` names the argument in errors."""
    V = as_float_array(V, "Voigt matrix")
    vshape = _maps(k.name, weight)[0]
    nd = len(vshape)
    if tuple(V.shape[V.ndim - nd:]) != vshape:
        raise ValueError(f"{k.name} Voigt form must have trailing shape {vshape}, got shape {tuple(V.shape)}")
    if finite:
        check_finite(V, f"{k.name} {name}", nd)
    if check and vshape == (6, 6):
        v = to_numpy64(V)
        asym = np.abs(v - np.swapaxes(v, -1, -2)).max(initial=0.0)
        scale = np.abs(v).max(initial=0.0)
        if asym > 1e-6 * max(scale, np.finfo(float).tiny):
            raise ValueError(
                f"{k.name} Voigt matrix is not symmetric: max |V - V^T| = {asym:.3g} "
                f"({asym / scale:.2e} of the largest entry); symmetrize it first, e.g. (V + V^T)/2"
            )
    _, _, _, idx, w = _maps(k.name, weight)
    batch = V.shape[: V.ndim - nd]
    flat = V.reshape(*batch, int(np.prod(vshape)))  # explicit size: -1 is ambiguous for an empty batch
    out = take_last(flat, idx) * constant(("voigt-winv", k.name, weight), w, flat)
    return out.reshape(*batch, *k.cartesian_shape)


def as_cartesian(T: Any, k: TensorKind):
    """``(Cartesian array, batch shape)`` of ``T`` given in the Cartesian form or (named kinds) the Voigt form.

    Voigt input is converted unchecked: the callers check finiteness and symmetry themselves.
    """
    T = as_float_array(T, f"{k.name} tensor")
    shape = tuple(T.shape)
    r = k.rank
    if shape[len(shape) - r:] == k.cartesian_shape and len(shape) >= r:
        return T, shape[: len(shape) - r]
    if k.voigt_shape is not None:
        nv = len(k.voigt_shape)
        if shape[len(shape) - nv:] == k.voigt_shape and len(shape) >= nv:
            return voigt_to_cartesian(T, k, float(k.voigt_weight), check=False, finite=False), shape[: len(shape) - nv]
        expected = f"{k.cartesian_shape} (Cartesian) or {k.voigt_shape} (Voigt)"
    else:
        expected = f"{k.cartesian_shape}"
    raise ValueError(f"{k.name} tensor must have trailing shape {expected}, got shape {shape}")


def to_voigt(T: Any, kind: str | TensorKind = KIND_REQUIRED):
    """Cartesian tensor -> Voigt form: ``(...,3,3)->(...,6)``, ``(...,3,3,3)->(...,3,6)``, ``(...,3,3,3,3)->(...,6,6)``.

    The kind fixes the factors: 1 for ``elastic``/``piezoelectric``/``dielectric``, 2 per shear index for
    ``compliance`` and ``piezoelectric_d``. Components are read from the upper index of each pair; no
    symmetry check is made (use :func:`irreptensor.decompose` to check). Any batch shape, empty included.

    Raises:
        ValueError: wrong trailing shape, or NaN/inf in ``T`` (names the first bad batch index).
    """
    k = _named(required_kind(kind, "to_voigt(T, kind)"))
    return cartesian_to_voigt(T, k, float(k.voigt_weight))


def from_voigt(V: Any, kind: str | TensorKind = KIND_REQUIRED, *, check: bool = True):
    """Voigt form -> full Cartesian tensor (inverse of :func:`to_voigt`).

    ``(...,6)->(...,3,3)``, ``(...,3,6)->(...,3,3,3)``, ``(...,6,6)->(...,3,3,3,3)``; any batch shape, empty
    included.

    Raises:
        ValueError: wrong trailing shape, NaN/inf in ``V`` (names the first bad batch index), or
            (``check=True``) a 6x6 Voigt matrix that is not symmetric.
    """
    k = _named(required_kind(kind, "from_voigt(V, kind)"))
    return voigt_to_cartesian(V, k, float(k.voigt_weight), check)


def to_mandel(T: Any, kind: str | TensorKind = KIND_REQUIRED):
    """Cartesian tensor -> Mandel (Kelvin) form: each shear Voigt index carries sqrt(2); norm preserving.

    Shapes as for :func:`to_voigt`: ``(...,3,3)->(...,6)``, ``(...,3,3,3)->(...,3,6)``,
    ``(...,3,3,3,3)->(...,6,6)``; units unchanged (GPa for stiffness, 1/GPa for compliance, ...).

    Raises:
        ValueError: wrong trailing shape, or NaN/inf in ``T``.
    """
    return cartesian_to_voigt(T, _named(required_kind(kind, "to_mandel(T, kind)")), float(np.sqrt(2.0)))


def from_mandel(M: Any, kind: str | TensorKind = KIND_REQUIRED, *, check: bool = True):
    """Mandel (Kelvin) form -> full Cartesian tensor (inverse of :func:`to_mandel`).

    ``(...,6)->(...,3,3)``, ``(...,3,6)->(...,3,3,3)``, ``(...,6,6)->(...,3,3,3,3)``; units unchanged.

    Raises:
        ValueError: wrong trailing shape, NaN/inf in ``M``, or (``check=True``) a 6x6 matrix that is not
            symmetric.
    """
    k = _named(required_kind(kind, "from_mandel(M, kind)"))
    return voigt_to_cartesian(M, k, float(np.sqrt(2.0)), check, name="Mandel form M")
