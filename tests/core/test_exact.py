"""Exact (symbolic) proofs that the stored bases are what they claim to be.

Everything here is done in sympy with exact algebraic numbers: no float tolerance is involved except in
the comparisons with e3nn and in the check that the float tables are the exact values correctly rounded.
"""

import itertools
import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import irreptensor as it
from irreptensor.exact import STORED_FORMULAS, derive_basis, to_float, wigner_3j
from irreptensor.formula import parse_formula

NAMED = ["dielectric", "piezoelectric", "elastic"]
TABLES = Path(it.__file__).parent / "_tables"


def _exact(kind):
    return np.array(it.basis(kind, exact=True).tolist(), dtype=object)


def _mode_product(Q, R, rank):
    """Apply R to every Cartesian index of the rows of Q: rows of Q R^{(x)rank}, exact."""
    T = Q.reshape((Q.shape[0],) + (3,) * rank)
    for axis in range(1, rank + 1):
        T = np.moveaxis(np.tensordot(T, R, axes=([axis], [0])), -1, axis)
    return T.reshape(Q.shape[0], -1)


def _simplify(M):
    return np.vectorize(lambda e: sp.nsimplify(sp.radsimp(sp.expand(e))) if e != 0 else sp.Integer(0),
                        otypes=[object])(M)


@pytest.mark.parametrize("kind", NAMED)
def test_orthonormal_exactly(kind):
    Q = _exact(kind)
    G = Q.dot(Q.T)
    G = np.vectorize(sp.expand, otypes=[object])(G)
    assert (G == np.eye(len(Q), dtype=int)).all()


@pytest.mark.parametrize("kind", NAMED)
def test_rows_have_the_index_symmetry_exactly(kind):
    k = it.get_kind(kind)
    f = parse_formula(k.formula)
    Q = _exact(kind).reshape((-1,) + (3,) * f.rank)
    for s, p in f.group:
        permuted = np.transpose(Q, (0,) + tuple(1 + i for i in np.argsort(p)))
        assert ((Q - s * permuted) == 0).all(), (kind, s, p)
    # and they span the whole symmetric subspace: dimension = rank of the group-average projector
    assert len(Q) == int(round(np.trace(f.projector())))


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            R = np.zeros((3, 3), dtype=object)
            for i, (j, s) in enumerate(zip(perm, signs)):
                R[i, j] = sp.Integer(s)
            yield R


def _radical_rows(Q):
    """Factor an exact basis as diag(sqrt(c)) @ Qr with Qr rational: every row has one radical class.

    Returns (c, Qr) with c a list of Fractions and Qr an object array of Fractions. This turns the exact
    products below into rational arithmetic, which is fast, instead of sympy simplification of radicals.
    """
    c, rows = [], []
    for row in Q:
        first = next(e for e in row if e != 0)
        rad = sp.sqrt(sp.expand(first * first)).as_coeff_Mul()[1]  # the squarefree radical, e.g. sqrt(5)
        r2 = sp.Rational(sp.expand(rad * rad))
        c.append(Fraction(int(r2.p), int(r2.q)))
        out = []
        for e in row:
            q = sp.Rational(sp.expand(e / rad))  # raises if the row mixes radical classes
            out.append(Fraction(int(q.p), int(q.q)))
        rows.append(out)
    return c, np.array(rows, dtype=object)


@lru_cache(maxsize=None)
def _kind_rows(kind):
    return _radical_rows(_exact(kind))


def _to_fraction(R):
    return np.vectorize(lambda e: Fraction(int(sp.Rational(e).p), int(sp.Rational(e).q)), otypes=[object])(R)


@lru_cache(maxsize=None)
def _harmonic_rows(l):
    fml = {2: "ij=ji", 3: "ijk=jik=ikj", 4: "ijkl=jikl=ikjl=ijlk"}[l]
    Q = np.array(derive_basis(fml).as_sympy().tolist(), dtype=object)
    return _radical_rows(Q[-(2 * l + 1):])


def _sandwich(c, Qr, R, rank):
    """Exact Q R^{(x)rank} Q^T for Q = diag(sqrt(c)) Qr, as (squared value, sign) per entry."""
    M = _mode_product(Qr, R, rank).dot(Qr.T)
    sq = np.array([[ci * cj * M[i, j] ** 2 for j, cj in enumerate(c)] for i, ci in enumerate(c)], dtype=object)
    sign = np.vectorize(lambda v: (v > 0) - (v < 0), otypes=[int])(M)
    return sq, sign


def _check_equivariance_exactly(kind, R):
    """Q R^{(x)r} Q^T must be block diagonal with the blocks D^l(R) = Y_l R^{(x)l} Y_l^T (x det R for axial blocks)."""
    k = it.get_kind(kind)
    R = _to_fraction(R)
    det = Fraction(int(round(float(np.linalg.det(R.astype(float))))))
    c, Qr = _kind_rows(kind)
    sq, sign = _sandwich(c, Qr, R, k.rank)
    exp_sq = np.zeros_like(sq)
    exp_sign = np.zeros_like(sign)
    for b in it.blocks(kind):
        if b.l == 0:
            s_, g_ = np.array([[Fraction(1)]], dtype=object), np.array([[1]])
        elif b.l == 1:
            s_, g_ = np.vectorize(lambda v: v * v, otypes=[object])(R), np.vectorize(lambda v: (v > 0) - (v < 0), otypes=[int])(R)
        else:
            s_, g_ = _sandwich(*_harmonic_rows(b.l), R, b.l)
        if b.parity != (-1) ** b.l:
            g_ = g_ * int(det)
        exp_sq[b.start:b.stop, b.start:b.stop] = s_
        exp_sign[b.start:b.stop, b.start:b.stop] = g_
    exp_sq[exp_sq == 0] = Fraction(0)
    assert (sq == exp_sq).all() and (sign == exp_sign).all(), kind


@pytest.mark.parametrize("kind", NAMED)
def test_equivariant_exactly_under_the_48_signed_permutations(kind):
    for R in _signed_permutations():
        _check_equivariance_exactly(kind, R)


@pytest.mark.parametrize("kind", NAMED)
def test_equivariant_exactly_under_a_pythagorean_rotation(kind):
    R = np.array([[sp.Rational(3, 5), sp.Rational(-4, 5), 0], [sp.Rational(4, 5), sp.Rational(3, 5), 0], [0, 0, 1]],
                 dtype=object)
    # a second one about another axis, composed, so that no coordinate axis is fixed
    S = np.array([[1, 0, 0], [0, sp.Rational(5, 13), sp.Rational(-12, 13)], [0, sp.Rational(12, 13), sp.Rational(5, 13)]],
                 dtype=object)
    _check_equivariance_exactly(kind, R.dot(S))
    _check_equivariance_exactly(kind, -R.dot(S))  # improper


@pytest.mark.parametrize("fml", STORED_FORMULAS)
def test_stored_exact_table_equals_a_fresh_derivation(fml):
    stored = json.loads((TABLES / "bases_exact.json").read_text())[fml]
    fresh = derive_basis(fml)
    assert stored["irreps"] == fresh.irreps_str()
    S = np.array([[sp.sympify(e) for e in row] for row in stored["matrix"]], dtype=object)
    assert (np.vectorize(sp.expand, otypes=[object])(S - fresh.matrix) == 0).all()


@pytest.mark.parametrize("fml", STORED_FORMULAS)
def test_float_table_is_the_exact_table_correctly_rounded(fml):
    exact = json.loads((TABLES / "bases_exact.json").read_text())[fml]["matrix"]
    floats = json.loads((TABLES / "bases_float.json").read_text())[fml]["matrix"]
    for erow, frow in zip(exact, floats):
        for e, f in zip(erow, frow):
            v = sp.sympify(e)
            assert f == to_float(v)
            # correct rounding: no float64 is closer to the exact value
            err = abs(sp.N(v, 40) - sp.Float(f, 40))
            assert err <= abs(sp.N(v, 40) - sp.Float(np.nextafter(f, np.inf), 40))
            assert err <= abs(sp.N(v, 40) - sp.Float(np.nextafter(f, -np.inf), 40))


def test_every_entry_is_plus_or_minus_sqrt_of_a_rational():
    for kind in NAMED:
        for e in _exact(kind).flat:
            assert sp.expand(e * e).is_Rational


def test_wigner_3j_is_unit_norm_and_real_exactly():
    for l1, l2, l3 in [(1, 1, 1), (2, 1, 1), (4, 3, 1), (2, 2, 2)]:
        W = wigner_3j(l1, l2, l3)
        assert sp.expand(sum(w * w for w in W.flat)) == 1
        assert all(sp.im(w) == 0 for w in W.flat)


def test_elastic_isotropic_coordinates_are_the_documented_traces():
    """0e[0] = C_iijj/3 and 0e[1] = (C_ijij - C_iijj/3)/sqrt(5) as in docs/conventions.md, exactly."""
    Q = _exact("elastic").reshape(21, 3, 3, 3, 3)
    d = np.eye(3, dtype=int)
    iijj = np.einsum("ij,kl->ijkl", d, d).astype(object)
    ijij = (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d)).astype(object) * sp.Rational(1, 2)
    row0 = iijj * sp.Rational(1, 3)
    row1 = (ijij - iijj * sp.Rational(1, 3)) / sp.sqrt(5)
    assert (np.vectorize(sp.expand, otypes=[object])(Q[0] - row0) == 0).all()
    assert (np.vectorize(sp.expand, otypes=[object])(Q[1] - row1) == 0).all()


@pytest.mark.parametrize("fml,parity", [("ij=-ji", None), ("ijk=jik=kji", None), ("ijkl=jikl=ijlk", None),
                                        ("ij=-ji", -1), ("ijk=-jik", None)])
def test_general_formulas_are_exact_and_match_e3nn(fml, parity):
    torch = pytest.importorskip("torch")
    e3nn_io = pytest.importorskip("e3nn.io")
    Q = np.array(derive_basis(fml, parity=parity).as_sympy().tolist(), dtype=object)
    G = np.vectorize(sp.expand, otypes=[object])(Q.dot(Q.T))
    assert (G == np.eye(len(Q), dtype=int)).all()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = e3nn_io.CartesianTensor(fml)
        Qe = ref.reduced_tensor_products().change_of_basis.flatten(1).numpy()
    finally:
        torch.set_default_dtype(prev)
    ours = it.basis(fml, parity=parity)
    assert np.abs(ours - Qe).max() <= 1e-13 * np.abs(Qe).max()
    irreps = str(ref) if parity is None else it.irreps(fml, parity=parity)
    if parity is None or parity == (-1) ** parse_formula(fml).rank:
        assert it.irreps(fml, parity=parity) == str(ref)
    else:  # axial: the same basis with every parity flipped
        assert irreps == str(ref).translate(str.maketrans("eo", "oe"))
