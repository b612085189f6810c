"""Exact quaternion-polynomial coefficients of the Wigner D matrices (writes ``_tables/wigner_quaternion.json``).

Run ``python -m irreptensor.wigner_tables`` to regenerate the table; the tests re-derive it and compare.

Why: the entries of e3nn's real ``D^l(R)`` are homogeneous polynomials of degree ``2l`` in the unit
quaternion ``q = (w, x, y, z)`` of the proper rotation ``R``, so a whole batch of ``D^l`` is one matrix
product ``monomials(q) (N, n_mono) @ C_l (n_mono, (2l+1)**2)`` (``n_mono = C(2l+3, 3)``: 10, 35, 84, 165
for l = 1..4). This module derives ``C_l`` exactly.

How: with ``R(q)`` written as homogeneous quadratics (``R00 = w^2 + x^2 - y^2 - z^2``, ``R01 = 2(xy - wz)``,
...; equal to the rotation matrix of ``q`` when ``|q| = 1``), ``D^l_{mn}(q) = Y_m . R(q)^{(x)l} Y_n``, where
the rows ``Y_m`` of the exact harmonic basis (``irreptensor.exact`` / ``bases_exact.json``) are each
``sqrt(a_m)`` times a rational vector. The contraction ``R(q)^{(x)l} Y_n`` is carried out on dense
integer coefficient arrays indexed by the exponents of ``(w, x, y, z)``, so every coefficient comes out as
``(p / r) * sqrt(t)`` with integers ``p, r`` and square-free ``t``. Each is stored as that exact string,
a 40-digit decimal and the correctly rounded float64 (the runtime uses the float64).

A homogeneous polynomial that vanishes on the unit sphere vanishes everywhere, so ``C_l`` is the unique
degree-``2l`` representation; no choice is involved.
"""

from __future__ import annotations

import json
import math
from itertools import combinations_with_replacement
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fractions import Fraction

__all__ = ["LMAX", "monomial_exponents", "quaternion_coefficients", "write_table", "TABLE_PATH"]

LMAX = 4
"""Largest degree ``l`` tabulated; ``wigner_D`` falls back to the ``Y_l`` recursion above it."""

TABLE_PATH = Path(__file__).parent / "_tables" / "wigner_quaternion.json"

# R(q) for q = (w, x, y, z) as homogeneous quadratics: R[i][j] = {exponent tuple: integer coefficient}
_W, _X, _Y, _Z = (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)


def _mono(*vars_):
    return tuple(sum(v[i] for v in vars_) for i in range(4))


_RQ = (
    ({_mono(_W, _W): 1, _mono(_X, _X): 1, _mono(_Y, _Y): -1, _mono(_Z, _Z): -1},
     {_mono(_X, _Y): 2, _mono(_W, _Z): -2},
     {_mono(_X, _Z): 2, _mono(_W, _Y): 2}),
    ({_mono(_X, _Y): 2, _mono(_W, _Z): 2},
     {_mono(_W, _W): 1, _mono(_X, _X): -1, _mono(_Y, _Y): 1, _mono(_Z, _Z): -1},
     {_mono(_Y, _Z): 2, _mono(_W, _X): -2}),
    ({_mono(_X, _Z): 2, _mono(_W, _Y): -2},
     {_mono(_Y, _Z): 2, _mono(_W, _X): 2},
     {_mono(_W, _W): 1, _mono(_X, _X): -1, _mono(_Y, _Y): -1, _mono(_Z, _Z): 1}),
)


def monomial_exponents(degree: int) -> list[tuple[int, int, int, int]]:
    """Exponents ``(e_w, e_x, e_y, e_z)`` of the degree-``degree`` monomials, in the order ``wigner_D`` builds them.

    The order is that of ``itertools.combinations_with_replacement(range(4), degree)`` (a monomial is the
    product of the variables of a non-decreasing index sequence), so the degree-``d`` monomials are
    ``q_v * (degree-(d-1) monomials whose first index is >= v)`` for ``v = 0..3``, each a contiguous block.
    """
    out = []
    for c in combinations_with_replacement(range(4), degree):
        e = [0, 0, 0, 0]
        for v in c:
            e[v] += 1
        out.append(tuple(e))
    return out


def _squarefree_split(n: int) -> tuple[int, int]:
    """``n = s**2 * t`` with ``t`` square-free; returns ``(s, t)``."""
    s, t, p = 1, 1, 2
    while p * p <= n:
        while n % (p * p) == 0:
            n //= p * p
            s *= p
        if n % p == 0:
            n //= p
            t *= p
        p += 1
    return s, t * n


def _harmonic_rows(l: int) -> tuple[list[int], list[int], np.ndarray]:
    """Exact ``Y_l`` rows as ``sqrt(a_m) * z_m / L_m``: returns ``(a, L, z)`` with ``z`` int64 ``(2l+1, 3**l)``."""
    d = 2 * l + 1
    if l == 0:
        return [1], [1], np.ones((1, 1), dtype=np.int64)
    if l == 1:
        return [1] * 3, [1] * 3, np.eye(3, dtype=np.int64)
    import sympy as sp

    from .basis import basis
    from .formula import symmetric_formula

    Y = basis(symmetric_formula(l), exact=True, parity=(-1) ** l)[-d:, :]
    a_list, L_list, rows = [], [], []
    for m in range(d):
        row = [sp.nsimplify(Y[m, j]) for j in range(Y.shape[1])]
        first = next(e for e in row if e != 0)
        sq = sp.Rational(first ** 2)
        _, a = _squarefree_split(int(sq.p * sq.q))
        rat = [sp.Rational(sp.simplify(e / sp.sqrt(a))) for e in row]  # raises if not rational
        L = math.lcm(*[int(r.q) for r in rat])
        a_list.append(a)
        L_list.append(L)
        rows.append([int(r * L) for r in rat])
    return a_list, L_list, np.array(rows, dtype=np.int64)


def _contract(z: np.ndarray, l: int, absolute: bool = False) -> np.ndarray:
    """``R(q)^{(x)l} z_n`` for every column n, as integer arrays over exponents.

    Returns ``T`` of shape ``(3**l, n_cols, E, E, E, E)``, ``E = 2l + 1``: ``T[I, n, e]`` is the coefficient of
    ``w^e0 x^e1 y^e2 z^e3`` in ``(R(q)^{(x)l} z_n)_I``. With ``absolute`` the same with all coefficients made
    non-negative (float64): a bound on every intermediate, used to rule out int64 overflow.
    """
    E = 2 * l + 1
    dtype = np.float64 if absolute else np.int64
    ncol = z.shape[0]
    T = np.zeros((3,) * l + (ncol, E, E, E, E), dtype=dtype)
    T[(Ellipsis, 0, 0, 0, 0)] = (np.abs(z) if absolute else z).T.reshape((3,) * l + (ncol,))
    for k in range(l):
        Tk = np.moveaxis(T, k, 0)
        new = np.zeros_like(Tk)
        for i in range(3):
            for j in range(3):
                for e, c in _RQ[i][j].items():
                    c = abs(c) if absolute else c
                    dst = (i, Ellipsis) + tuple(slice(ei, E) for ei in e)
                    src = (j, Ellipsis) + tuple(slice(0, E - ei) for ei in e)
                    new[dst] += c * Tk[src]
        T = np.moveaxis(new, 0, k)
    return T.reshape((3 ** l, ncol) + (E,) * 4)


def _round_scaled_sqrt(f: Fraction, t: int) -> float:
    """The float64 nearest to ``f * sqrt(t)`` (``t`` square-free), decided in exact rational arithmetic."""
    from fractions import Fraction

    if f == 0:
        return 0.0
    if t == 1:
        return float(f)  # Fraction -> float rounds correctly
    sign = 1 if f > 0 else -1
    v2 = f * f * t  # the square of |value|, exact
    c = math.sqrt(float(v2))
    for _ in range(4):  # move to the correctly rounded neighbour (at most a step or two)
        up, down = math.nextafter(c, math.inf), math.nextafter(c, 0.0)
        if v2 > ((Fraction(c) + Fraction(up)) / 2) ** 2:
            c = up
        elif v2 < ((Fraction(c) + Fraction(down)) / 2) ** 2:
            c = down
        else:
            break
    return sign * c


def _exact_string(f: Fraction, t: int) -> str:
    num = f"{f.numerator}" if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return num if t == 1 else f"{num}*sqrt({t})"


def quaternion_coefficients(l: int) -> dict:
    """Exact coefficients of ``D^l`` (e3nn real basis) in the degree-``2l`` monomials of the quaternion.

    Returns a dict with ``l``, ``monomials`` (exponent tuples, row order of ``C_l``) and ``entries``: a list of
    ``[row, col, float64, exact string, 40-digit string]`` for the nonzero ``C_l[row, col]``, where
    ``col = m * (2l+1) + n`` indexes the flattened ``D^l_{mn}``. Exact strings read ``p/r*sqrt(t)``.
    """
    from fractions import Fraction

    import mpmath

    d = 2 * l + 1
    a, L, z = _harmonic_rows(l)
    bound = np.einsum("mi,in...->mn...", np.abs(z).astype(np.float64), _contract(z, l, absolute=True))
    if bound.max() >= 2.0 ** 62:
        raise OverflowError(f"l={l}: integer coefficients may overflow int64 (bound {bound.max():.3g})")
    P = np.einsum("mi,in...->mn...", z, _contract(z, l))  # (d, d, E, E, E, E) integers
    monos = monomial_exponents(2 * l)
    entries = []
    with mpmath.workdps(60):
        for row, e in enumerate(monos):
            for m in range(d):
                for n in range(d):
                    p = int(P[(m, n) + e])
                    if p == 0:
                        continue
                    s, t = _squarefree_split(a[m] * a[n])
                    f = Fraction(p * s, L[m] * L[n])
                    dec = mpmath.mpf(f.numerator) / f.denominator * mpmath.sqrt(t)
                    entries.append([row, m * d + n, _round_scaled_sqrt(f, t), _exact_string(f, t),
                                    mpmath.nstr(dec, 40, min_fixed=-5, max_fixed=5)])
    # every exponent that carries a coefficient must have total degree 2l (homogeneity)
    degrees = np.indices(P.shape[2:]).sum(0)
    if np.any(P[..., degrees != 2 * l] != 0):
        raise AssertionError(f"l={l}: non-homogeneous coefficients")
    return {"l": l, "monomials": [list(e) for e in monos], "entries": entries}


def write_table(path: Path = TABLE_PATH, lmax: int = LMAX) -> None:
    """Derive ``C_1 .. C_lmax`` and write them as JSON (a few hundred kB)."""
    table = {
        "description": "D^l_{mn}(q) = sum_k C_l[k, m*(2l+1)+n] * prod(q**monomials[k]), q=(w,x,y,z) unit quaternion "
                       "of the proper rotation; e3nn real basis. Generated by python -m irreptensor.wigner_tables.",
        "degrees": {str(l): quaternion_coefficients(l) for l in range(1, lmax + 1)},
    }
    path.write_text(json.dumps(table, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    write_table()
    print(f"wrote {TABLE_PATH} ({TABLE_PATH.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - t0:.1f} s")
