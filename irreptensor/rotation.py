"""Rotations and reflections of Cartesian tensors, and the checks on rotation matrices."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import as_float_array, batch_index, is_torch, to_numpy64
from .kinds import TensorKind, get_kind

__all__ = ["rotate", "check_rotation", "random_rotation"]

ORTHOGONALITY_TOL = 1e-6
"""Largest accepted ``max |R R^T - 1|`` for a matrix passed as a rotation."""

_LETTERS = "abcdefgh"


def check_rotation(R: Any, tol: float = ORTHOGONALITY_TOL):
    """Validate ``(..., 3, 3)`` orthogonal matrices.

    Returns:
        ``(R_flat (N, 3, 3), det (N,) of +-1 as R's type, batch shape)``.

    Raises:
        ValueError: wrong shape, NaN/inf, or ``max |R R^T - 1| > tol`` (names the worst matrix).
    """
    R = as_float_array(R, "rotation matrix R")
    if R.ndim < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise ValueError(f"rotation matrix R must have shape (..., 3, 3), got {tuple(R.shape)}")
    batch = tuple(R.shape[:-2])
    flat = R.reshape(-1, 3, 3)
    r64 = to_numpy64(flat)
    if not np.isfinite(r64).all():
        i = int(np.flatnonzero(~np.isfinite(r64).all((1, 2)))[0])
        raise ValueError(f"rotation matrix R contains NaN or inf at batch index {batch_index(i, batch)}")
    err = np.abs(r64 @ np.swapaxes(r64, 1, 2) - np.eye(3)).max((1, 2)) if len(r64) else np.zeros(0)
    if len(err) and err.max() > tol:
        i = int(np.argmax(err))
        raise ValueError(
            f"R is not orthogonal: max |R R^T - 1| = {err[i]:.3e} at batch index "
            f"{batch_index(i, batch)} (tolerance {tol:g})"
        )
    d = np.sign(np.linalg.det(r64)) if len(r64) else np.zeros(0)
    if is_torch(flat):
        import torch

        det = torch.as_tensor(d, dtype=flat.dtype, device=flat.device)
    else:
        det = d.astype(flat.dtype)
    return flat, det, batch


def rotate(T: Any, R: Any, kind: str | TensorKind = "elastic", *, parity: int | None = None):
    """Rotate (or reflect) Cartesian tensors: ``T'_{a..} = (det R)^s R_{ai} ... T_{i..}``.

    ``s = 1`` for axial kinds (parity opposite to ``(-1)**rank``), else 0. Leading batch dimensions of
    ``T`` and ``R`` broadcast. Voigt input of a named kind is returned in Voigt form.

    Args:
        T: ``(..., 3, ..., 3)`` Cartesian (or the kind's Voigt form); numpy or torch.
        R: ``(..., 3, 3)`` orthogonal matrices.
    """
    k = get_kind(kind, parity)
    from .decomposition import _cartesian

    T0 = as_float_array(T, f"{k.name} tensor")
    Tc, tbatch = _cartesian(T0, k)
    voigt_in = tuple(T0.shape) != tuple(Tc.shape)
    Rf, det, rbatch = check_rotation(R)
    Rb = Rf.reshape(*rbatch, 3, 3)
    r = k.rank
    out_idx = _LETTERS[:r]
    in_idx = "ijklmnop"[:r]
    terms = [f"...{o}{i}" for o, i in zip(out_idx, in_idx)]
    spec = ",".join(terms + [f"...{in_idx}"]) + f"->...{out_idx}"
    ops = [Rb] * r + [Tc]
    if is_torch(Tc):
        import torch

        out = torch.einsum(spec, *ops)
    else:
        out = np.einsum(spec, *ops, optimize=True)
    if k.parity != (-1) ** r:
        out = out * det.reshape(*rbatch, *([1] * r))
    if voigt_in:
        from .voigt import to_voigt

        out = to_voigt(out, k.name)
    return out


def random_rotation(n: int | None = None, proper: bool = True, seed: int | None = None) -> np.ndarray:
    """Uniformly random rotation matrices ``(n, 3, 3)`` (or ``(3, 3)`` for ``n=None``), float64.

    ``proper=False`` multiplies each by ``-1`` (an improper rotation, det -1).
    """
    rng = np.random.default_rng(seed)
    m = 1 if n is None else n
    q = rng.normal(size=(m, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    if not proper:
        R = -R
    return R[0] if n is None else R
