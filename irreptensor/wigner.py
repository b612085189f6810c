"""Wigner D matrices in e3nn's real basis, from rotation matrices, without Euler angles.

``D^l(R) = Y_l R^{(x)l} Y_l^T``, where the rows of ``Y_l`` (stored exactly) are the rank-l Cartesian
harmonic tensors (totally symmetric, traceless) in e3nn's real spherical-harmonic basis. Expanding
``R^{(x)l}`` is wasteful, so ``D^l`` is built from ``D^{l-1}`` and ``R`` with the fixed coupling
``W_l = Y_l (Y_{l-1}^T (x) 1)``: ``D^l = W_l (D^{l-1} (x) R) W_l^T``. Both products are large matrix
products over the whole batch; no trigonometry, so the result is exact to float rounding and smooth
at gimbal-lock orientations where Euler-angle routes lose accuracy.

For an improper ``R`` (det -1), an irrep of parity ``p`` gets ``D = (det R)^k D^l(R)`` with
``k = 1`` when ``p != (-1)^l``: this equals e3nn's ``p^k D^l(det(R) R)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .backend import constant, is_torch
from .basis import _float_basis, blocks
from .kinds import TensorKind, get_kind
from .rotation import check_rotation

__all__ = ["wigner_D", "harmonic_basis"]

_SYMMETRIC = {2: "ij=ji", 3: "ijk=jik=ikj", 4: "ijkl=jikl=ikjl=ijlk"}


def _symmetric_formula(l: int) -> str:
    if l in _SYMMETRIC:
        return _SYMMETRIC[l]
    letters = "ijklmnpqrs"[:l]
    swaps = [letters[:i] + letters[i + 1] + letters[i] + letters[i + 2:] for i in range(l - 1)]
    return "=".join([letters, *swaps])


@lru_cache(maxsize=None)
def harmonic_basis(l: int) -> np.ndarray:
    """``Y_l``: the rank-l harmonic tensors in e3nn's real basis, read-only float64 ``(2l+1, 3**l)``."""
    if l == 0:
        Y = np.ones((1, 1))
    elif l == 1:
        Y = np.eye(3)
    else:
        Q = _float_basis(_symmetric_formula(l), (-1) ** l)[1]
        Y = np.array(Q[-(2 * l + 1):])  # the top irrep comes last in e3nn's order
    Y.setflags(write=False)
    return Y


@lru_cache(maxsize=None)
def _coupling(l: int) -> np.ndarray:
    """``W_l`` of shape ``(2l+1, (2l-1)*3)``: couples ``D^{l-1} (x) D^1`` to ``D^l``."""
    Yl = harmonic_basis(l).reshape(2 * l + 1, 3 ** (l - 1), 3)
    Yp = harmonic_basis(l - 1)
    W = np.einsum("mca,ic->mia", Yl, Yp).reshape(2 * l + 1, (2 * l - 1) * 3)
    W.setflags(write=False)
    return W


def _perm(x, axes):
    return x.permute(*axes) if is_torch(x) else x.transpose(axes)


def _next_D(Dp, R, l: int):
    """``D^l`` from ``D^{l-1}`` (N, 2l-1, 2l-1) and ``R`` (N, 3, 3): two batch-wide matrix products."""
    n, dp = Dp.shape[0], Dp.shape[1]
    d = 2 * l + 1
    W = constant(("W", l), _coupling(l), R)
    Wm = constant(("Wm", l), _coupling(l).reshape(d, dp, 3).transpose(0, 2, 1).reshape(d * 3, dp), R)
    B = (Wm @ _perm(Dp, (1, 0, 2)).reshape(dp, n * dp)).reshape(d, 3, n, dp)  # [m, a, n, j]
    A = (B[:, 0, :, :, None] * R[None, :, 0, None, :]
         + B[:, 1, :, :, None] * R[None, :, 1, None, :]
         + B[:, 2, :, :, None] * R[None, :, 2, None, :])  # [m, n, j, b]
    out = A.reshape(d * n, dp * 3) @ W.T  # [(m, n), m']
    return _perm(out.reshape(d, n, d), (1, 0, 2))


def _chain(R, lmax: int) -> list:
    """[D^0, D^1, ..., D^lmax] for a flat batch of proper-or-improper R (N, 3, 3)."""
    n = R.shape[0]
    ones = R.new_ones((n, 1, 1)) if is_torch(R) else np.ones((n, 1, 1), dtype=R.dtype)
    Ds = [ones, R]
    for l in range(2, lmax + 1):
        Ds.append(_next_D(Ds[-1], R, l))
    return Ds[: lmax + 1]


def wigner_D(kind: str | TensorKind, R: Any, *, parity: int | None = None, chunk: int = 16384):
    """Representation matrices of rotations/reflections on a kind's irreps coordinates.

    ``decompose(rotate(T, R)) == wigner_D(kind, R) @ decompose(T)``; the same matrices as e3nn's
    ``Irreps(irreps(kind)).D_from_matrix(R)``.

    Args:
        kind: a kind name or formula (or an e3nn-style irreps string such as ``"1x0e+2x1o"``).
        R: ``(..., 3, 3)`` orthogonal matrices, proper or improper; numpy or torch.
        chunk: rotations per block of work (bounds temporary memory on CPU).

    Returns:
        ``(..., dim, dim)`` block-diagonal matrices.

    Raises:
        ValueError: when ``R`` has the wrong shape, non-finite entries, or is not orthogonal.
    """
    if isinstance(kind, str) and "x" in kind and not set(kind) - set("0123456789xeo+ "):
        from .basis import _blocks

        blks = _blocks(kind.replace(" ", ""))
    else:
        blks = blocks(get_kind(kind, parity))
    R, det, batch = check_rotation(R)
    dim = blks[-1].stop
    lmax = max(b.l for b in blks)
    n = R.shape[0]
    if is_torch(R):
        out = R.new_zeros((n, dim, dim))
    else:
        out = np.zeros((n, dim, dim), dtype=R.dtype)
    step = n if is_torch(R) else max(1, chunk)
    for s in range(0, n, step):
        Rc = R[s:s + step]
        Ds = _chain(Rc, lmax)
        dc = det[s:s + step]
        for b in blks:
            D = Ds[b.l]
            if b.parity != (-1) ** b.l:
                D = D * dc[:, None, None]
            out[s:s + step, b.start:b.stop, b.start:b.stop] = D
    return out.reshape(*batch, dim, dim)
