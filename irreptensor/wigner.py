"""Wigner D matrices in e3nn's real basis, from rotation matrices, without Euler angles.

Two exact routes, both free of trigonometry (so accurate to float rounding everywhere, including the
gimbal-lock orientations where Euler-angle routes lose digits):

* ``l <= 4`` (every named crystal kind), the fast path. Each entry of ``D^l`` is a homogeneous polynomial
  of degree ``2l`` in the unit quaternion ``q = (w, x, y, z)`` of the proper part ``P = det(R) R``, with
  exact coefficients tabulated by :mod:`irreptensor.wigner_tables` (``_tables/wigner_quaternion.json``).
  ``q`` itself is never formed: every even-degree monomial is a product of the pair products
  ``q_i q_j = K_ij / 4``, which are linear in ``P`` (``4 w^2 = 1 + tr P``, ``4 wx = P_21 - P_12``,
  ``4 xy = P_01 + P_10``, ...). So no square root, no branch on the largest component, and a signed
  permutation ``P`` gives exactly dyadic monomials. The monomials split into four classes by the
  parity of their exponents (the characters of the rotations by pi about x, y, z, which are diagonal
  +-1 in e3nn's basis); each entry of ``D^l`` uses one class only. A class is a pair product (or
  ``1``, ``wxyz``) times the monomials of the squares ``(w^2, x^2, y^2, z^2)``, so ``D^l`` for a batch is
  four small matrix products ``(N, K_g) @ (K_g, n_g)`` (``K_g`` = 45, 40, 40, 40 and ``n_g`` = 21, 20, 20,
  20 for ``l = 4``): about 4x fewer flops than one dense ``(N, 165) @ (165, 81)`` product.
* any ``l`` (general formula kinds of rank >= 5), the recursion ``D^l = Y_l P^{(x)l} Y_l^T`` built as
  ``D^l = W_l (D^{l-1} (x) P) W_l^T`` with ``W_l = Y_l (Y_{l-1}^T (x) 1)``, where the rows of ``Y_l``
  are the rank-l Cartesian harmonic tensors (totally symmetric, traceless). The tests also use it as an
  independent reference for the tabulated path.

Parity: e3nn's ``D_from_matrix`` uses ``D^l(P)`` and multiplies the blocks of odd parity ``p = -1`` by
``det R``; so does this module, for any ``R`` (``D = det(R)^k D^l(P)``, ``k = 1`` when ``p = -1``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ._blas import block_rows, default_threads, matmul_rows, run_chunks
from .backend import constant, is_torch, take_last
from .basis import blocks, float_basis, irreps_blocks
from .formula import symmetric_formula
from .kinds import TensorKind, get_kind, kind_last
from .rotation import check_rotation

__all__ = ["wigner_D", "harmonic_basis"]

_QTABLE = Path(__file__).parent / "_tables" / "wigner_quaternion.json"
"""Written by ``python -m irreptensor.wigner_tables`` (not imported here, so that running it as
``__main__`` does not find itself already imported); read on the first ``wigner_D`` call."""

@lru_cache(maxsize=None)
def harmonic_basis(l: int) -> np.ndarray:
    """``Y_l``: the rank-l harmonic tensors in e3nn's real basis, read-only float64 ``(2l+1, 3**l)``."""
    if l == 0:
        Y = np.ones((1, 1))
    elif l == 1:
        Y = np.eye(3)
    else:
        Q = float_basis(symmetric_formula(l), parity=(-1) ** l)
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
    """[D^0, D^1, ..., D^lmax] by the ``Y_l`` recursion for a flat batch ``R`` (N, 3, 3).

    For improper ``R`` this is ``det(R)^l D^l(det(R) R)``; :func:`wigner_D` passes the proper part.
    """
    n = R.shape[0]
    ones = R.new_ones((n, 1, 1)) if is_torch(R) else np.ones((n, 1, 1), dtype=R.dtype)
    Ds = [ones, R]
    for l in range(2, lmax + 1):
        Ds.append(_next_D(Ds[-1], R, l))
    return Ds[: lmax + 1]




# ----------------------------------------------------------------------------------------------------
# the tabulated quaternion-polynomial path (l <= 4)

# The ten pair products q_i q_j of the quaternion of a proper rotation P, as affine functions of P
# (flattened row-major, P[3*i + j]): 4 q_i q_j = c0 + sum_k c_k P[k]. Row order: the squares
# (ww, xx, yy, zz), then the six class prefactors.
_PAIR_NAMES = ("ww", "xx", "yy", "zz", "wx", "yz", "wy", "xz", "wz", "xy")
_PAIRS = (
    (1, {0: 1, 4: 1, 8: 1}),   # 4 w^2 = 1 + P00 + P11 + P22
    (1, {0: 1, 4: -1, 8: -1}),  # 4 x^2
    (1, {0: -1, 4: 1, 8: -1}),  # 4 y^2
    (1, {0: -1, 4: -1, 8: 1}),  # 4 z^2
    (0, {7: 1, 5: -1}),  # 4 wx = P21 - P12
    (0, {5: 1, 7: 1}),   # 4 yz = P12 + P21
    (0, {2: 1, 6: -1}),  # 4 wy = P02 - P20
    (0, {2: 1, 6: 1}),   # 4 xz = P02 + P20
    (0, {3: 1, 1: -1}),  # 4 wz = P10 - P01
    (0, {1: 1, 3: 1}),   # 4 xy = P01 + P10
)
_PAIR_ROW = {name: i for i, name in enumerate(_PAIR_NAMES)}
# exponent parities (e_w, e_x, e_y, e_z) mod 2 -> (class, prefactor). The classes are the characters of
# the rotations by pi about x, y, z; a class is a prefactor times the monomials of the squares.
_CLASS_OF_PARITY = {
    (0, 0, 0, 0): (0, None), (1, 1, 1, 1): (0, "wxyz"),
    (1, 1, 0, 0): (1, "wx"), (0, 0, 1, 1): (1, "yz"),
    (1, 0, 1, 0): (2, "wy"), (0, 1, 0, 1): (2, "xz"),
    (1, 0, 0, 1): (3, "wz"), (0, 1, 1, 0): (3, "xy"),
}
_CLASS_FACTORS = ((None, "wxyz"), ("wx", "yz"), ("wy", "xz"), ("wz", "xy"))
_PREFACTOR_EXPONENTS = {
    None: (0, 0, 0, 0), "wxyz": (1, 1, 1, 1), "wx": (1, 1, 0, 0), "yz": (0, 0, 1, 1),
    "wy": (1, 0, 1, 0), "xz": (0, 1, 0, 1), "wz": (1, 0, 0, 1), "xy": (0, 1, 1, 0),
}


@lru_cache(maxsize=None)
def _pair_affine() -> tuple[np.ndarray, np.ndarray]:
    """``(A (10, 9), b (10,))`` with ``[q_i q_j] = A @ P.reshape(9) + b`` for the names ``_PAIR_NAMES``."""
    A = np.zeros((10, 9))
    b = np.zeros(10)
    for r, (c0, lin) in enumerate(_PAIRS):
        b[r] = 0.25 * c0
        for k, c in lin.items():
            A[r, k] = 0.25 * c
    A.setflags(write=False)
    b.setflags(write=False)
    return A, b


@lru_cache(maxsize=None)
def _n_mono(k: int) -> int:
    """Number of degree-k monomials of 4 variables, ``C(k+3, 3)``."""
    return (k + 1) * (k + 2) * (k + 3) // 6


@lru_cache(maxsize=None)
def _combos_start(k: int) -> tuple[int, ...]:
    """Rows of the degree-k monomials (combinations-with-replacement order) whose smallest variable index
    is >= v begin at ``_combos_start(k)[v]``, v = 0..3: so ``S_{k+1} = [s_v * S_k[start[v]:] for v]``."""
    from itertools import combinations_with_replacement

    combos = list(combinations_with_replacement(range(4), k))
    return tuple(next(i for i, c in enumerate(combos) if c[0] >= v) for v in range(4))


@lru_cache(maxsize=None)
def _square_index(k: int) -> dict:
    """Exponent tuple of a degree-k monomial of the squares -> its row in the generated order."""
    from .wigner_tables import monomial_exponents

    return {e: i for i, e in enumerate(monomial_exponents(k))}


@lru_cache(maxsize=None)
def _qtable() -> dict:
    import json

    return json.loads(_QTABLE.read_text())["degrees"]


def _qmax() -> int:
    """Largest tabulated degree (4); ``wigner_D`` uses the recursion above it."""
    return max(int(l) for l in _qtable())


@lru_cache(maxsize=None)
def _plan(l: int):
    """The class-split coefficient matrices of ``D^l``, ``1 <= l <= 4``, from the stored table.

    Returns ``(groups, order)``. ``groups`` has one ``(factors, C_g, start, stop)`` per class: ``factors``
    lists ``(prefactor, k)`` (the class monomial matrix is ``[prefactor * S_k for each factor]`` stacked,
    ``S_k`` the degree-k monomials of the squares), ``C_g`` is float64 ``(K_g, n_g)`` and the class's outputs
    are columns ``start:stop`` of the concatenated class outputs ``G`` (``(N, (2l+1)**2)``). ``order``
    (``(2l+1)**2,``) gives the column of ``G`` holding the entry ``m*(2l+1)+n`` of ``D^l``.
    """
    table = _qtable()[str(l)]
    rows = []  # per q-monomial: (class, factor index, row in S_k)
    for e in table["monomials"]:
        g, pre = _CLASS_OF_PARITY[tuple(v % 2 for v in e)]
        sq = tuple((v - p) // 2 for v, p in zip(e, _PREFACTOR_EXPONENTS[pre]))
        rows.append((g, _CLASS_FACTORS[g].index(pre), _square_index(sum(sq))[sq]))
    col_class: dict[int, int] = {}
    for r, col, *_ in table["entries"]:
        if col_class.setdefault(col, rows[r][0]) != rows[r][0]:
            raise AssertionError(f"D^{l} entry {col} mixes monomial classes")
    d2 = (2 * l + 1) ** 2
    if sorted(col_class) != list(range(d2)):
        raise AssertionError(f"D^{l}: some entries have no coefficients")
    groups, concat = [], []
    for g, pres in enumerate(_CLASS_FACTORS):
        factors = tuple((p, l - sum(_PREFACTOR_EXPONENTS[p]) // 2) for p in pres
                        if l - sum(_PREFACTOR_EXPONENTS[p]) // 2 >= 0)
        offsets = np.cumsum([0] + [_n_mono(k) for _, k in factors])
        cols = [c for c in range(d2) if col_class[c] == g]
        where = {c: i for i, c in enumerate(cols)}
        C = np.zeros((int(offsets[-1]), len(cols)))
        for r, col, val, *_ in table["entries"]:
            gg, fi, k = rows[r]
            if gg == g:
                C[offsets[fi] + k, where[col]] = val
        C.setflags(write=False)
        groups.append((factors, C, len(concat), len(concat) + len(cols)))
        concat += cols
    order = np.empty(d2, dtype=np.intp)
    order[np.array(concat, dtype=np.intp)] = np.arange(d2)
    order.setflags(write=False)
    return tuple(groups), order


def _quaternion_D_torch(Pt, ls, like) -> dict:
    """``{l: D^l (n, 2l+1, 2l+1)}`` for ``l`` in ``ls`` (each 1..4) from proper ``Pt`` (9, n), torch, differentiable."""
    import torch

    A, b = _pair_affine()
    pairs = constant(("wignerA",), A, like) @ Pt + constant(("wignerb",), b[:, None], like)
    wxyz = pairs[4] * pairs[5]
    sq = pairs[:4]
    S = [sq.new_ones((1, sq.shape[1])), sq]
    for k in range(2, max(ls) + 1):
        st = _combos_start(k - 1)
        S.append(torch.cat([sq[v] * S[k - 1][st[v]:] for v in range(4)], 0))
    out = {}
    for l in ls:
        groups, order = _plan(l)
        Gs = []
        for g, (factors, C, _, _) in enumerate(groups):
            parts = [S[k] if p is None else (wxyz if p == "wxyz" else pairs[_PAIR_ROW[p]]) * S[k] for p, k in factors]
            M = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
            Gs.append(M.T @ constant(("wignerQ", l, g), C, like))
        d = 2 * l + 1
        out[l] = take_last(torch.cat(Gs, 1), order).reshape(-1, d, d)
    return out


class _NumpyWorkspace:
    """Buffers for one ``wigner_D`` call on numpy input, sized for ``step`` rotations, reused per chunk.

    Layout ``(rows, step)``: each monomial is a contiguous row over the rotations, so building a row is one
    vectorized multiply, and ``M.T`` is a Fortran-ordered operand for BLAS.
    """

    def __init__(self, ls: list[int], step: int, dtype):
        self.ls, self.step, self.dtype = ls, step, dtype
        kmax = max(ls)
        self.Pt = np.empty((9, step), dtype)
        self.pairs = np.empty((10, step), dtype)
        self.wxyz = np.empty(step, dtype)
        self.M = {}  # (l, g) -> (K_g, step)
        for l in ls:
            for g, (_, C, _, _) in enumerate(_plan(l)[0]):
                self.M[l, g] = np.empty((C.shape[0], step), dtype)
        # S_k: S_1 is the squares (rows 0..3 of pairs); S_l for a tabulated l is the head of class 0 of l
        self.S = {0: np.ones((1, step), dtype), 1: self.pairs[:4]}
        for k in range(2, kmax + 1):
            self.S[k] = self.M[k, 0][: _n_mono(k)] if k in ls else np.empty((_n_mono(k), step), dtype)
        # the classes whose head S_k is already in place (S_l is built into class 0 of l)
        self.in_place = {(l, 0) for l in ls if l >= 2 and np.shares_memory(self.S[l], self.M[l, 0])}
        self.G = {l: np.empty((step, (2 * l + 1) ** 2), dtype) for l in ls}
        # rotations per BLAS call: the whole chunk, or blocks small enough for OpenBLAS not to thread them
        # (the threaded path also limits BLAS to one thread; see irreptensor._blas)
        self.rows = {0: block_rows(9, 10, step)}
        for l in ls:
            for g, (_, C, _, _) in enumerate(_plan(l)[0]):
                self.rows[l, g] = block_rows(*C.shape, step)
        self.D = {l: np.empty((step, (2 * l + 1) ** 2), dtype) for l in ls}

    def compute(self, Rc, dc) -> dict:
        """``{l: D^l(P) (c, 2l+1, 2l+1)}`` (views into the workspace) for the proper parts of ``Rc`` (c, 3, 3)."""
        c = Rc.shape[0]
        Pt, pairs, wxyz = self.Pt[:, :c], self.pairs[:, :c], self.wxyz[:c]
        np.multiply(Rc.reshape(c, 9).T, dc, out=Pt)
        A, b = _pair_affine()
        matmul_rows(Pt.T, constant(("wignerAT",), A.T, Pt), pairs.T, self.rows[0])
        pairs += constant(("wignerb",), b[:, None], Pt)
        np.multiply(pairs[4], pairs[5], out=wxyz)
        S = {k: v[:, :c] for k, v in self.S.items()}
        for k in range(2, max(self.ls) + 1):
            st, o, prev = _combos_start(k - 1), 0, S[k - 1]
            for v in range(4):
                n = prev.shape[0] - st[v]
                np.multiply(pairs[v], prev[st[v]:], out=S[k][o:o + n])
                o += n
        out = {}
        for l in self.ls:
            groups, order = _plan(l)
            G = self.G[l][:c]
            for g, (factors, C, a, z) in enumerate(groups):
                M = self.M[l, g][:, :c]
                o = 0
                for p, k in factors:
                    n = _n_mono(k)
                    if p is None:
                        if (l, g) not in self.in_place:
                            M[o:o + n] = S[k]
                    else:
                        np.multiply(wxyz if p == "wxyz" else pairs[_PAIR_ROW[p]], S[k], out=M[o:o + n])
                    o += n
                matmul_rows(M.T, constant(("wignerQ", l, g), C, Pt), G[:, a:z], self.rows[l, g])
            D = self.D[l][:c]
            np.take(G, order, axis=1, out=D, mode="clip")  # indices are valid; "clip" skips the checks (1.7x)
            d = 2 * l + 1
            out[l] = D.reshape(c, d, d)
        return out


def _TORCH_FLOATS():
    import torch

    return (torch.float32, torch.float64)


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def _irreps_of(blks) -> str:
    """The e3nn irreps string of a block layout (``wigner_D`` accepts it as ``kind``)."""
    return "+".join(f"1x{b.l}{'e' if b.parity == 1 else 'o'}" for b in blks)


def _blocks_of(kind, parity):
    if isinstance(kind, str) and "x" in kind and not set(kind) - set("0123456789xeo+ "):
        return irreps_blocks(kind.replace(" ", ""))
    return blocks(get_kind(kind, parity=parity))


def wigner_D(R: Any, kind: str | TensorKind, *, parity: int | None = None, chunk: int = 2048,
             threads: int | None = 1):
    """Representation matrices of rotations/reflections on a kind's irreps coordinates.

    ``decompose(rotate(T, R, kind), kind) == wigner_D(R, kind) @ decompose(T, kind)``; the same matrices as e3nn's
    ``Irreps(irreps(kind)).D_from_matrix(R)`` (to float rounding: ~1e-15 in float64), computed without
    Euler angles (see the module docstring).

    Args:
        R: ``(..., 3, 3)`` orthogonal matrices, proper or improper; numpy or torch (float32/float64, any
            device; differentiable for torch).
        kind: a kind name or formula (or an e3nn-style irreps string such as ``"1x0e+2x1o"``). The order
            ``wigner_D(kind, R)`` of earlier versions still works for one release, with a DeprecationWarning.
        parity: parity of a formula kind (default polar).
        chunk: rotations per block of work on numpy input (keeps the temporaries in cache). Torch input
            that needs a graph (``requires_grad`` with grad enabled) or lives off the CPU is processed in
            one block by torch ops; other CPU torch input goes through the numpy path (zero-copy).
        threads: worker threads for numpy input with several chunks; ``None``: as many as BLAS would use
            (its thread count as threadpoolctl reads it, which follows ``OPENBLAS_NUM_THREADS`` etc., at
            most the usable CPUs). Each thread fills a contiguous run of chunks of the output, including the
            first touch of its pages; meanwhile BLAS is limited to one thread (threadpoolctl, process-wide).
            Default 1 (the calling thread). The result does not depend on ``chunk`` or ``threads``.

    Returns:
        ``(..., dim, dim)`` block-diagonal matrices, the array type, dtype and device of ``R``.

    Raises:
        ValueError: when ``R`` has the wrong shape, non-finite entries, or is not orthogonal.
    """
    R, kind = kind_last(R, kind, "wigner_D(R, kind)")
    blks = _blocks_of(kind, parity)
    if is_torch(R) and R.device.type == "cpu" and R.dtype in _TORCH_FLOATS() and not (
            R.requires_grad and _grad_enabled()):
        # no graph to record: the numpy path (10x faster on CPU), sharing memory both ways
        import torch

        D = wigner_D(R.detach().numpy(), _irreps_of(blks), chunk=chunk, threads=threads)
        return torch.from_numpy(D)
    R, det, batch = check_rotation(R)
    dim = blks[-1].stop
    n = R.shape[0]
    ls = sorted({b.l for b in blks})
    qmax = _qmax()
    fast = [l for l in ls if 1 <= l <= qmax]
    slow = [l for l in ls if l > qmax]
    if is_torch(R):
        P = R * det[:, None, None]
        Ds = _quaternion_D_torch(P.reshape(n, 9).T, fast, R) if fast else {}
        if slow:
            chain = _chain(P, max(slow))
            Ds.update({l: chain[l] for l in slow})
        if 0 in ls:
            Ds[0] = R.new_ones((n, 1, 1))
        out = R.new_zeros((n, dim, dim))
        for b in blks:
            out[:, b.start:b.stop, b.start:b.stop] = Ds[b.l] * det[:, None, None] if b.parity == -1 else Ds[b.l]
        return out.reshape(*batch, dim, dim)

    step = max(256, min(int(chunk), n) // 256 * 256)
    # np.zeros maps fresh zero pages; only the diagonal blocks are written, straight into them
    out = np.zeros((n, dim, dim), dtype=R.dtype)
    if n == 0:
        return out.reshape(*batch, dim, dim)
    views = {b.start: _row_view(out, b.start, b.dim) for b in blks if b.l > 0}
    threads = default_threads() if threads is None else int(threads)

    def make_work():
        ws = _NumpyWorkspace(fast, step, R.dtype) if fast else None
        return lambda s, e: _fill_chunk(R[s:e], det[s:e], s, blks, ws, slow, out, views)

    # numpy's ufunc loops and BLAS release the GIL, so chunks on several threads run in parallel
    run_chunks(make_work, n, step, threads)
    return out.reshape(*batch, dim, dim)


def _fill_chunk(Rc, dc, s: int, blks, ws, slow: list, out, views) -> None:
    """Write the blocks of ``out[s:s+c]`` for the rotations ``Rc`` (c, 3, 3) with signs ``dc`` (numpy)."""
    c = Rc.shape[0]
    Ds = ws.compute(Rc, dc) if ws is not None else {}
    if slow:
        chain = _chain(Rc * dc[:, None, None], max(slow))
        Ds.update({l: np.ascontiguousarray(chain[l]) for l in slow})
    negs = {}
    for b in blks:
        if b.l == 0:
            out[s:s + c, b.start, b.start] = dc if b.parity == -1 else 1.0
            continue
        D = Ds[b.l]
        if b.parity == -1:
            if b.l not in negs:
                negs[b.l] = np.multiply(D, dc[:, None, None], out=np.empty_like(D))
            D = negs[b.l]
        views[b.start][s:s + c] = _row_view(D, 0, b.dim)


def _row_view(a: np.ndarray, start: int, d: int) -> np.ndarray:
    """The rows of the block ``a[:, start:start+d, start:start+d]`` as a ``(n, d)`` array of opaque
    ``d * itemsize``-byte items.

    Copying a block through this view moves one row (``d`` numbers) per item instead of one number, so
    numpy's strided copy makes ``d`` times fewer inner-loop steps (measured ~1.5x faster block writes).
    ``a`` is C-contiguous ``(n, dim, dim)``.
    """
    n, dim = a.shape[0], a.shape[1]
    if not a.flags.c_contiguous:
        raise AssertionError("_row_view needs a C-contiguous array")
    item = a.itemsize
    return np.ndarray(shape=(n, d), dtype=np.dtype(f"V{d * item}"), buffer=a,
                      offset=(start * dim + start) * item, strides=(dim * dim * item, dim * item))
