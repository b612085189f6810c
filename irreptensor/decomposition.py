"""``decompose`` (Cartesian -> irreps coordinates) and ``compose`` (the inverse), numpy and torch.

One matrix product with the stored float64 basis each way. The input checks of ``decompose`` ride on
the per-tensor squared norms ``|T|^2`` and ``|x|^2``: they give both the finiteness test and the distance
from the symmetric subspace, ``|T - P T|^2 = |T|^2 - |x|^2``, so checking costs one norm per tensor instead
of one pass per index symmetry. For numpy input the product and the norms go chunk by chunk, each chunk's
norms next to its product while the chunk is in cache, so the check adds no second pass over ``T`` from
memory.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .backend import as_float_array, batch_index, check_tolerance, constant, is_torch, non_finite_error, to_numpy64
from .basis import float_basis
from .kinds import KIND_REQUIRED, TensorKind, get_kind, renamed_keyword, required_kind
from .voigt import as_cartesian

__all__ = ["decompose", "compose", "DEFAULT_SYMMETRY_TOL"]

DEFAULT_SYMMETRY_TOL = 1e-6
"""Largest relative asymmetry ``|T - P T|_F / |T|_F`` accepted without ``symmetrize_indices=True``."""


def _first_bad(mask: np.ndarray, batch: tuple[int, ...]) -> str:
    return f"at batch index {batch_index(np.flatnonzero(mask)[0], batch)}"


@renamed_keyword("symmetrize", "symmetrize_indices")
def decompose(T: Any, kind: str | TensorKind = KIND_REQUIRED, *, symmetrize_indices: bool = False,
              tol: float | None = None, parity: int | None = None):
    """Irreps coordinates of Cartesian tensors: ``x = Q T``.

    Args:
        T: array ``(..., 3, ..., 3)``; named kinds also take their Voigt form (``(..., 6, 6)`` elastic,
            ``(..., 3, 6)`` piezoelectric, ``(..., 6)`` dielectric). numpy or torch, float32 or float64.
        kind: a kind name or index-symmetry formula (see :func:`irreptensor.get_kind`). Required; leaving it
            out still means ``"elastic"`` with a DeprecationWarning (removed in the next release).
        symmetrize_indices: project a tensor that lacks the kind's index symmetry onto the symmetric part instead of
            raising (the projection is what the product computes anyway).
        tol: largest accepted relative asymmetry ``|T - P T| / |T|`` (default ``1e-6``); a finite number
            ``>= 0`` (NaN, which would turn the check off, and negative values raise ValueError).
        parity: parity for formula kinds (default polar).

    Returns:
        ``(..., dim)`` coordinates in the layout of :func:`irreptensor.irreps` (e3nn's), same array type,
        dtype and device; differentiable for torch. ``|x| = |T|_F`` for symmetric ``T``.

    Raises:
        ValueError: wrong trailing shape, NaN/inf entries, an asymmetric tensor (names the worst one), or a
            bad ``tol``.
    """
    k = get_kind(required_kind(kind, "decompose(T, kind)"), parity=parity)
    tol = DEFAULT_SYMMETRY_TOL if tol is None else check_tolerance(tol, "tol")
    T, batch = as_cartesian(T, k)
    Q = float_basis(k)
    flat = T.reshape(-1, Q.shape[1])
    if is_torch(flat):
        x = flat @ constant(("basisT", k.key), Q.T, flat)
        t2, x2 = _torch_norms(flat, x, k)
    else:
        x, t2, x2 = _project_numpy(flat, k)
    _check(flat, t2, x2, k, batch, symmetrize_indices, tol)
    return x.reshape(*batch, Q.shape[0])


_CHUNK_BYTES = 2 << 20
"""Bytes of ``T`` per chunk of :func:`_project_numpy`: about the size of a core's L2 cache, so that the
product reads the chunk that the norm pass has just brought in (on the 2-core VM about 1.3x the bare
product in all, against about 1.45x with 4 MB chunks and 1.6x with 16 MB)."""

_BUSY_CHUNK_BYTES = 32 << 20
"""Chunk size once BLAS's threads are seen to be slow to start (a busy machine): each chunk's product is a
thread hand-off, which then costs milliseconds, so the rest goes in a few large products."""

_BUSY_RATIO = 10.0
"""A chunk's product taking this many times longer than its norm pass marks the machine as busy
(measured on the 2-core VM: about 2.3 when idle, about 23 with two other busy processes)."""


def _project_numpy(flat: np.ndarray, k: TensorKind):
    """``x = flat @ Q^T`` with the per-row ``|T|^2`` and ``|x|^2`` (float64) in the same pass over ``flat``.

    ``flat`` is ``(N, 3**rank)``. Chunk by chunk: the chunk's ``|T|^2`` (which reads it into cache), its
    product (one BLAS call, threaded as BLAS sees fit, like a plain ``flat @ Q^T``, reading the chunk from
    cache), then its ``|x|^2``; so the check costs no second pass over ``T`` from memory. The products
    are the rows of one ``flat @ Q^T`` (to the rounding of BLAS's blocking).

    Returns:
        ``(x (N, dim) of flat's dtype, t2 (N,), x2 (N,))``; for float32 input ``x2`` comes from a float64
        product, so that ``t2 - x2`` measures the asymmetry and not float32 rounding.
    """
    Q = float_basis(k)
    n, K = flat.shape
    QT = constant(("basisT", k.key), Q.T, flat)
    x = np.empty((n, Q.shape[0]), dtype=flat.dtype)
    t2 = np.empty(n)
    x2 = np.empty(n)
    step = max(1, _CHUNK_BYTES // (K * flat.itemsize))
    s = 0
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite norms are diagnosed by _check
        while s < n:
            e = min(s + step, n)
            Tc, xc = flat[s:e], x[s:e]
            t0 = time.perf_counter()
            _row_dots(Tc, t2[s:e])
            t1 = time.perf_counter()
            np.matmul(Tc, QT, out=xc)
            if time.perf_counter() - t1 > _BUSY_RATIO * (t1 - t0):
                step = max(step, _BUSY_CHUNK_BYTES // (K * flat.itemsize))
            if flat.dtype != np.float64:
                xc = Tc.astype(np.float64) @ constant(("basisT", k.key), Q.T, Q)
            _row_dots(xc, x2[s:e])
            s = e
    return x, t2, x2


def _row_dots(a: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = sum_j a[i, j]**2`` accumulated in float64 (``np.vecdot`` where numpy has it: 1.7x faster
    than ``einsum`` on rows of 81)."""
    if hasattr(np, "vecdot"):
        np.vecdot(a, a, out=out, dtype=np.float64)
    else:  # numpy < 2.0
        np.einsum("ij,ij->i", a, a, out=out, dtype=np.float64)


def _torch_norms(flat, x, k: TensorKind):
    """Per-row ``|T|^2`` and ``|x|^2`` of torch input as float64 numpy (float32: ``x`` recomputed in float64)."""
    import torch

    with torch.no_grad():
        f64 = flat.detach().double()
        if flat.dtype == torch.float64:
            x64 = x.detach()  # already the float64 product
        else:
            x64 = f64 @ constant(("basisT", k.key), float_basis(k).T, f64)
        return (f64 * f64).sum(-1).cpu().numpy(), (x64 * x64).sum(-1).cpu().numpy()


def _check(flat, t2: np.ndarray, x2: np.ndarray, k: TensorKind, batch, symmetrize_indices: bool, tol: float) -> None:
    """Raise on non-finite input or on asymmetry beyond ``tol`` (relative Frobenius).

    ``t2`` and ``x2`` are the per-tensor ``|T|^2`` and ``|x|^2``: their difference is ``|T - P T|^2``.
    """
    total = t2.sum()
    # squares below ~1e-250 lose their precision in subnormal numbers (e.g. entries of 1e-160)
    tiny = bool(((t2 < 1e-250) & (t2 != 0)).any()) or (
        bool((t2 == 0).any()) and bool(np.abs(to_numpy64(flat)).max(initial=0.0) > 0))
    if not np.isfinite(total) or tiny:
        if not np.isfinite(to_numpy64(flat)).all():
            raise non_finite_error(f"{k.name} tensor", to_numpy64(flat), batch)
        # finite entries whose squares overflow or underflow: recheck on a rescaled copy
        scale = np.abs(to_numpy64(flat)).max(-1, keepdims=True)
        scale[scale == 0] = 1.0
        f = to_numpy64(flat) / scale
        t2 = np.einsum("ij,ij->i", f, f)
        xs = f @ float_basis(k).T
        x2 = np.einsum("ij,ij->i", xs, xs)
    if symmetrize_indices:
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
            "pass symmetrize_indices=True to project onto the symmetric part"
        )


def compose(x: Any, kind: str | TensorKind = KIND_REQUIRED, *, parity: int | None = None):
    """Cartesian tensors from irreps coordinates: ``T = Q^T x`` (inverse of :func:`decompose`).

    Args:
        x: ``(..., dim)`` coordinates, numpy or torch.
        kind: a kind name or formula (required; see :func:`decompose`).
        parity: parity for formula kinds (default polar).

    Returns:
        ``(..., 3, ..., 3)`` Cartesian tensors with exactly the kind's index symmetry.
    """
    k = get_kind(required_kind(kind, "compose(x, kind)"), parity=parity)
    x = as_float_array(x, f"{k.name} irreps coordinates")
    Q = float_basis(k)
    if x.ndim < 1 or x.shape[-1] != Q.shape[0]:
        raise ValueError(
            f"{k.name} irreps coordinates must have trailing dimension {Q.shape[0]}, got shape {tuple(x.shape)}"
        )
    batch = tuple(x.shape[:-1])
    flat = x.reshape(-1, Q.shape[0]) if x.ndim != 2 else x
    # the finiteness test on a detached sum: float() of a tensor that requires grad warns
    s = flat.detach().sum() if is_torch(flat) else flat.sum()
    if not bool(np.isfinite(float(s))):
        bad = ~np.isfinite(to_numpy64(flat)).all(-1)
        if bad.any():
            raise ValueError(f"{k.name} irreps coordinates contain NaN or inf {_first_bad(bad, batch)}")
    T = flat @ constant(("basis", k.key), Q, flat)
    return T.reshape(*batch, *k.cartesian_shape)
