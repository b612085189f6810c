"""``decompose`` (Cartesian -> irreps coordinates) and ``compose`` (the inverse), numpy and torch.

One matrix product with the stored float64 basis each way. The input checks ride on quantities the
product needs anyway: the per-tensor squared norms ``|T|^2`` and ``|x|^2`` give both the finiteness test
and the distance from the symmetric subspace, ``|T - P T|^2 = |T|^2 - |x|^2``, so checking costs one
pass over the data instead of one per index symmetry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import as_float_array, batch_index, constant, is_torch, to_numpy64
from .basis import float_basis
from .kinds import TensorKind, get_kind

__all__ = ["decompose", "compose", "DEFAULT_SYMMETRY_TOL"]

DEFAULT_SYMMETRY_TOL = 1e-6
"""Largest relative asymmetry ``|T - P T|_F / |T|_F`` accepted without ``symmetrize=True``."""


def _cartesian(T: Any, k: TensorKind):
    """Return the Cartesian array and the batch shape; converts Voigt input of named kinds."""
    T = as_float_array(T, f"{k.name} tensor")
    shape = tuple(T.shape)
    r = k.rank
    if shape[len(shape) - r:] == k.cartesian_shape and len(shape) >= r:
        return T, shape[: len(shape) - r]
    if k.voigt_shape is not None:
        nv = len(k.voigt_shape)
        if shape[len(shape) - nv:] == k.voigt_shape and len(shape) >= nv:
            from .voigt import from_voigt

            return from_voigt(T, k.name, check=False), shape[: len(shape) - nv]
        expected = f"{k.cartesian_shape} (Cartesian) or {k.voigt_shape} (Voigt)"
    else:
        expected = f"{k.cartesian_shape}"
    raise ValueError(f"{k.name} tensor must have trailing shape {expected}, got shape {shape}")


def _first_bad(mask: np.ndarray, batch: tuple[int, ...]) -> str:
    return f"at batch index {batch_index(np.flatnonzero(mask)[0], batch)}"


def decompose(T: Any, kind: str = "elastic", *, symmetrize: bool = False, tol: float | None = None,
              parity: int | None = None):
    """Irreps coordinates of Cartesian tensors: ``x = Q T``.

    Args:
        T: array ``(..., 3, ..., 3)``; named kinds also take their Voigt form (``(..., 6, 6)`` elastic,
            ``(..., 3, 6)`` piezoelectric, ``(..., 6)`` dielectric). numpy or torch, float32 or float64.
        kind: a kind name or index-symmetry formula (see :func:`irreptensor.get_kind`).
        symmetrize: project a tensor that lacks the kind's index symmetry onto the symmetric part instead of
            raising (the projection is what the product computes anyway).
        tol: largest accepted relative asymmetry ``|T - P T| / |T|`` (default ``1e-6``).
        parity: parity for formula kinds (default polar).

    Returns:
        ``(..., dim)`` coordinates in the layout of :func:`irreptensor.irreps` (e3nn's), same array type,
        dtype and device; differentiable for torch. ``|x| = |T|_F`` for symmetric ``T``.

    Raises:
        ValueError: wrong trailing shape, NaN/inf entries, or an asymmetric tensor (names the worst one).
    """
    k = get_kind(kind, parity)
    T, batch = _cartesian(T, k)
    Q = float_basis(k)
    flat = T.reshape(-1, Q.shape[1])
    Qt = constant(("basisT", k.key), Q.T, flat)
    x = flat @ Qt
    _check(flat, x, k, batch, symmetrize, DEFAULT_SYMMETRY_TOL if tol is None else tol)
    return x.reshape(*batch, Q.shape[0])


def _check(flat, x, k: TensorKind, batch, symmetrize: bool, tol: float) -> None:
    """Raise on non-finite input or on asymmetry beyond ``tol`` (relative Frobenius)."""
    if is_torch(flat):
        import torch

        with torch.no_grad():
            f64 = flat.detach().double()
            if flat.dtype == torch.float64:
                x64 = x.detach()  # already the float64 product
            else:  # float32: recompute the coordinates in float64 so the residual is meaningful
                x64 = f64 @ constant(("basisT", k.key), float_basis(k).T, f64)
            t2 = (f64 * f64).sum(-1).cpu().numpy()
            x2 = (x64 * x64).sum(-1).cpu().numpy()
    else:
        t2 = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
        if flat.dtype == np.float64:
            x2 = np.einsum("ij,ij->i", x, x)
        else:
            x64 = flat.astype(np.float64) @ float_basis(k).T
            x2 = np.einsum("ij,ij->i", x64, x64)
    total = t2.sum()
    if not np.isfinite(total):
        bad = ~np.isfinite(to_numpy64(flat)).all(-1)
        if bad.any():
            what = "NaN" if np.isnan(to_numpy64(flat)[bad]).any() else "inf"
            raise ValueError(f"{k.name} tensor contains {what} {_first_bad(bad, batch)}")
        # finite entries whose squares overflow: recheck on a rescaled copy
        scale = np.abs(to_numpy64(flat)).max(-1, keepdims=True)
        scale[scale == 0] = 1.0
        f = to_numpy64(flat) / scale
        t2 = np.einsum("ij,ij->i", f, f)
        xs = f @ float_basis(k).T
        x2 = np.einsum("ij,ij->i", xs, xs)
    if symmetrize:
        return
    resid = np.maximum(t2 - x2, 0.0)
    # relative asymmetry; rounding puts a floor of ~1e-8 on what float64 can see this way
    bad = resid > (tol * tol) * t2
    if bad.any():
        rel = np.sqrt(resid / np.where(t2 > 0, t2, 1.0))
        i = int(np.argmax(np.where(bad, rel, -1)))
        where = f"at batch index {batch_index(i, batch)}"
        raise ValueError(
            f"{k.name} tensor lacks the index symmetry {k.formula}: relative asymmetry |T - P T|/|T| = "
            f"{rel[i]:.3e} {where} ({int(bad.sum())} of {bad.size} tensors above tol={tol:g}); "
            "pass symmetrize=True to project onto the symmetric part"
        )


def compose(x: Any, kind: str = "elastic", *, parity: int | None = None):
    """Cartesian tensors from irreps coordinates: ``T = Q^T x`` (inverse of :func:`decompose`).

    Args:
        x: ``(..., dim)`` coordinates, numpy or torch.
        kind: a kind name or formula.

    Returns:
        ``(..., 3, ..., 3)`` Cartesian tensors with exactly the kind's index symmetry.
    """
    k = get_kind(kind, parity)
    x = as_float_array(x, f"{k.name} irreps coordinates")
    Q = float_basis(k)
    if x.ndim < 1 or x.shape[-1] != Q.shape[0]:
        raise ValueError(
            f"{k.name} irreps coordinates must have trailing dimension {Q.shape[0]}, got shape {tuple(x.shape)}"
        )
    batch = tuple(x.shape[:-1])
    flat = x.reshape(-1, Q.shape[0]) if x.ndim != 2 else x
    s = flat.sum()
    if not bool(np.isfinite(float(s))):
        bad = ~np.isfinite(to_numpy64(flat)).all(-1)
        if bad.any():
            raise ValueError(f"{k.name} irreps coordinates contain NaN or inf {_first_bad(bad, batch)}")
    T = flat @ constant(("basis", k.key), Q, flat)
    return T.reshape(*batch, *k.cartesian_shape)
