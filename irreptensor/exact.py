"""Exact (sympy) derivation of the Cartesian -> irreps change of basis.

The construction mirrors ``e3nn.o3.ReducedTensorProducts`` step by step, in exact arithmetic, so
that the layout, the real spherical-harmonic basis and the gauge inside repeated irreps are e3nn's:

1. real Wigner 3j symbols: SU(2) Clebsch-Gordan coefficients (Racah formula) moved to e3nn's real
   basis by ``change_basis_real_to_complex`` (with its ``(-i)**l`` factor) and normalized;
2. coupling paths of the rank-r product of ``1o`` (Cartesian vectors, e3nn's ``1o`` is (x, y, z)),
   coupled left to right, in e3nn's order (stable sort by output irrep);
3. for each output irrep, the projector, in the space of paths, onto the combinations that satisfy
   the index symmetry, and e3nn's Gram-Schmidt (``e3nn.math.orthonormalize``: rows in path order,
   first nonzero coefficient made positive) on its rows.

Every entry of the resulting bases is ``±sqrt(rational)``; they are stored as such. This module
imports sympy and is only used to derive tables (``python -m irreptensor.exact``) and for formulas
that have no stored table; array code never imports it at module load.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import factorial

import numpy as np

from .formula import parse_formula

__all__ = ["wigner_3j", "real_to_complex", "derive_basis", "ExactBasis"]


def _sympy():
    import sympy

    return sympy


def _simplify_radical(e):
    """Return ``e`` as ``sign * sqrt(q)`` with rational q when ``e**2`` is rational, else ``e`` expanded."""
    sp = _sympy()
    e = sp.expand(e)
    if e == 0:
        return sp.Integer(0)
    sq = sp.expand(e * e)
    if sq.is_Rational:
        sign = 1 if e.is_positive else -1
        return sign * sp.sqrt(sq)
    return e


@lru_cache(maxsize=None)
def _su2_cg(j1: int, j2: int, j3: int):
    """SU(2) Clebsch-Gordan coefficients <j1 m1 j2 m2 | j3 m3> as a dict {(i1, i2, i3): sympy number}.

    Indices are offsets ``m + j``; the Racah formula as in e3nn (taken there from QuTiP), exact.
    """
    sp = _sympy()
    out = {}
    if not (abs(j1 - j2) <= j3 <= j1 + j2):
        return out
    f = factorial
    for m1 in range(-j1, j1 + 1):
        for m2 in range(-j2, j2 + 1):
            m3 = m1 + m2
            if abs(m3) > j3:
                continue
            vmin = max(-j1 + j2 + m3, -j1 + m1, 0)
            vmax = min(j2 + j3 + m1, j3 - j1 + j2, j3 + m3)
            pref = Fraction(
                (2 * j3 + 1) * f(j3 + j1 - j2) * f(j3 - j1 + j2) * f(j1 + j2 - j3) * f(j3 + m3) * f(j3 - m3),
                f(j1 + j2 + j3 + 1) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2),
            )
            S = Fraction(0)
            for v in range(vmin, vmax + 1):
                S += (-1) ** (v + j2 + m2) * Fraction(
                    f(j2 + j3 + m1 - v) * f(j1 - m1 + v),
                    f(v) * f(j3 - j1 + j2 - v) * f(j3 + m3 - v) * f(v + j1 - j2 - m3),
                )
            if S != 0:
                out[(j1 + m1, j2 + m2, j3 + m3)] = sp.sqrt(sp.Rational(pref.numerator, pref.denominator)) * sp.Rational(
                    S.numerator, S.denominator
                )
    return out


@lru_cache(maxsize=None)
def real_to_complex(l: int):
    """e3nn's ``change_basis_real_to_complex(l)`` exactly: a (2l+1, 2l+1) sympy Matrix."""
    sp = _sympy()
    q = sp.zeros(2 * l + 1, 2 * l + 1)
    r2 = 1 / sp.sqrt(2)
    for m in range(-l, 0):
        q[l + m, l + abs(m)] = r2
        q[l + m, l - abs(m)] = -sp.I * r2
    q[l, l] = 1
    for m in range(1, l + 1):
        q[l + m, l + abs(m)] = (-1) ** m * r2
        q[l + m, l - abs(m)] = sp.I * (-1) ** m * r2
    return ((-sp.I) ** l * q).expand()


@lru_cache(maxsize=None)
def wigner_3j(l1: int, l2: int, l3: int) -> np.ndarray:
    """e3nn's real Wigner 3j tensor ``wigner_3j(l1, l2, l3)`` exactly: object array (2l1+1, 2l2+1, 2l3+1), unit norm."""
    sp = _sympy()
    if not (abs(l2 - l3) <= l1 <= l2 + l3):
        raise ValueError(f"(l1, l2, l3) = {(l1, l2, l3)} violates the triangle rule")
    Q1, Q2, Q3 = real_to_complex(l1), real_to_complex(l2), real_to_complex(l3)
    cg = _su2_cg(l1, l2, l3)
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    C = np.empty((d1, d2, d3), dtype=object)
    # C[j,l,m] = sum_{i,k,n} Q1[i,j] Q2[k,l] conj(Q3[n,m]) cg[i,k,n]
    for j in range(d1):
        for l_ in range(d2):
            for m in range(d3):
                acc = 0
                for (i, k, n), c in cg.items():
                    a = Q1[i, j]
                    if a == 0:
                        continue
                    b = Q2[k, l_]
                    if b == 0:
                        continue
                    g = sp.conjugate(Q3[n, m])
                    if g == 0:
                        continue
                    acc += a * b * g * c
                acc = sp.expand(acc)
                re, im = acc.as_real_imag()
                if sp.simplify(im) != 0:
                    raise AssertionError(f"wigner_3j({l1},{l2},{l3}) is not real at {(j, l_, m)}: {acc}")
                C[j, l_, m] = sp.expand(re)
    norm2 = sp.nsimplify(sum(sp.expand(c * c) for c in C.flat))
    norm2 = sp.expand(norm2)
    if not norm2.is_Rational:
        raise AssertionError(f"wigner_3j({l1},{l2},{l3}) has an irrational squared norm {norm2}")
    inv = 1 / sp.sqrt(norm2)
    for idx in np.ndindex(C.shape):
        C[idx] = _simplify_radical(C[idx] * inv)
    return C


def _paths(rank: int):
    """e3nn's ``_wigner_nj`` for ``rank`` copies of ``1o``: list of (l, parity, path, tensor (2l+1, 3**rank) object).

    Component normalization: each tensor has sum of squares equal to 2l+1 (unit rows).
    """
    sp = _sympy()
    eye = np.empty((3, 3), dtype=object)
    for a in range(3):
        for b in range(3):
            eye[a, b] = sp.Integer(int(a == b))
    ret = [(1, -1, (1,), eye)]
    for _ in range(rank - 1):
        new = []
        for l_left, p_left, path, C_left in ret:
            for l_out in range(abs(l_left - 1), l_left + 2):
                W = wigner_3j(l_out, l_left, 1) * sp.sqrt(2 * l_out + 1)  # (out, left, 1)
                # C[i, k, l] = sum_j C_left[j, k] W[i, j, l]
                n_left = C_left.shape[1]
                C = np.empty((2 * l_out + 1, n_left, 3), dtype=object)
                for i in range(2 * l_out + 1):
                    for k in range(n_left):
                        col = [C_left[j, k] for j in range(C_left.shape[0])]
                        for l_ in range(3):
                            acc = 0
                            for j, cj in enumerate(col):
                                if cj != 0:
                                    w = W[i, j, l_]
                                    if w != 0:
                                        acc += cj * w
                            C[i, k, l_] = sp.expand(acc)
                new.append((l_out, -p_left, path + (l_out,), C.reshape(2 * l_out + 1, n_left * 3)))
        # stable sort by e3nn's Irrep order: (l, p) with p = -1 before +1
        ret = sorted(new, key=lambda t: (t[0], t[1]))
    return ret


class ExactBasis:
    """Exact change of basis for one formula and parity.

    Attributes:
        formula: the index-symmetry formula.
        irreps: list of (mul, l, p) after merging consecutive equal irreps (e3nn's ``simplify``).
        matrix: object array (dim, 3**rank) of sympy numbers, rows orthonormal.
    """

    def __init__(self, formula: str, irreps, matrix):
        self.formula = formula
        self.irreps = irreps
        self.matrix = matrix

    def irreps_str(self) -> str:
        return "+".join(f"{m}x{l}{'e' if p == 1 else 'o'}" for m, l, p in self.irreps)

    def as_sympy(self):
        return _sympy().Matrix(self.matrix.tolist())


def _dot(a, b):
    sp = _sympy()
    return sp.expand(sum(x * y for x, y in zip(a, b) if x != 0 and y != 0))


@lru_cache(maxsize=None)
def derive_basis(formula: str, *, parity: int | None = None) -> ExactBasis:
    """Derive the exact basis of ``formula`` (tensor of Cartesian ``1o`` indices).

    Args:
        formula: index-symmetry formula, e.g. ``"ijkl=jikl=klij"``.
        parity: +1 or -1 for the tensor's parity under inversion; ``None`` means the polar default
            ``(-1)**rank``. An axial tensor (``parity = -(-1)**rank``) has the same basis with every
            irrep's parity flipped.
    """
    sp = _sympy()
    f = parse_formula(formula)
    rank = f.rank
    natural = (-1) ** rank
    if parity is None:
        parity = natural
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity!r}")
    flip = parity * natural
    P = f.projector()  # float but entries k/|G|; rebuild exactly
    G = len(f.group)
    Pex = np.vectorize(lambda v: sp.Rational(int(round(v * G)), G), otypes=[object])(P)

    nz = [np.nonzero(P[:, c])[0] for c in range(P.shape[1])]  # sparsity of the projector's columns

    groups: dict[tuple[int, int], list] = {}
    order: list[tuple[int, int]] = []
    for l, p, path, C in _paths(rank):
        key = (l, p)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(C)

    rows = []
    irreps = []
    for key in order:
        Rs = groups[key]
        l, p = key
        mul = len(Rs)
        r0 = [R[0] for R in Rs]  # first component of each path, length 3**rank
        # S applied to each path's first row (dense matrix-vector with exact rationals)
        Sr0 = []
        for v in r0:
            out = [sp.Integer(0)] * len(v)
            for c, vc in enumerate(v):
                if vc == 0:
                    continue
                for a in nz[c]:
                    out[a] += Pex[a, c] * vc
            Sr0.append([sp.expand(o) for o in out])
        Pi = [[_dot(r0[u], Sr0[v]) for v in range(mul)] for u in range(mul)]
        # e3nn.math.orthonormalize on the rows of Pi
        final = []
        for u in range(mul):
            x = list(Pi[u])
            for y in final:
                c = sp.expand(sum(a * b for a, b in zip(x, y)))
                x = [sp.expand(a - c * b) for a, b in zip(x, y)]
            n2 = sp.expand(sum(a * a for a in x))
            if n2 == 0:
                continue
            inv = 1 / sp.sqrt(n2)
            x = [_simplify_radical(a * inv) for a in x]
            first = next(a for a in x if a != 0)
            if first.is_negative:
                x = [-a for a in x]
            final.append(x)
        for x in final:
            C = sum((x[u] * Rs[u] for u in range(mul) if x[u] != 0), np.zeros_like(Rs[0]))
            C = np.vectorize(_simplify_radical, otypes=[object])(C)
            n2 = sp.expand(sum(c * c for c in C.flat))
            if n2 != 2 * l + 1:
                C = np.vectorize(_simplify_radical, otypes=[object])(C * sp.sqrt(sp.Rational(2 * l + 1) / n2))
            rows.append(C)  # unit rows: e3nn's component normalization gives sum C**2 = 2l+1
            pp = p * flip
            if irreps and irreps[-1][1:] == (l, pp):
                irreps[-1] = (irreps[-1][0] + 1, l, pp)
            else:
                irreps.append((1, l, pp))
    if not rows:
        raise ValueError(f"formula {formula!r} allows no nonzero tensor")
    M = np.concatenate(rows, axis=0)
    M = np.vectorize(_simplify_radical, otypes=[object])(M)
    return ExactBasis(formula, tuple(irreps), M)


# Formulas whose bases are stored: the three crystal-tensor kinds and the totally symmetric
# tensors of rank 2..4, whose top block is the rank-l Cartesian harmonic used by ``wigner_D``.
STORED_FORMULAS = ("ij=ji", "ijk=ikj", "ijkl=jikl=klij", "ijk=jik=ikj", "ijkl=jikl=ikjl=ijlk")


def to_float(expr) -> float:
    """The float64 nearest to an exact sympy number (50 significant digits, then one rounding)."""
    return float(_sympy().N(expr, 50))


def write_tables(directory) -> None:
    """Write ``bases_exact.json`` (sympy strings) and ``bases_float.json`` (correctly rounded floats)."""
    import json
    from pathlib import Path

    exact, floats = {}, {}
    for fml in STORED_FORMULAS:
        b = derive_basis(fml)
        exact[fml] = {"irreps": b.irreps_str(), "matrix": [[str(e) for e in row] for row in b.matrix]}
        floats[fml] = {"irreps": b.irreps_str(), "matrix": [[to_float(e) for e in row] for row in b.matrix]}
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "bases_exact.json").write_text(json.dumps(exact, indent=0) + "\n")
    (d / "bases_float.json").write_text(json.dumps(floats) + "\n")


if __name__ == "__main__":  # pragma: no cover - developer entry point: regenerate the stored tables
    from pathlib import Path

    write_tables(Path(__file__).parent / "_tables")
    print("wrote", Path(__file__).parent / "_tables")
