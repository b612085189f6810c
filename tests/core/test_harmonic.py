"""Harmonic (Backus) decomposition: exact relations to the e3nn blocks, reconstruction, orthogonality."""

import numpy as np
import pytest
from hypothesis import given, settings

import irreptensor as it
from irreptensor.harmonic import (
    DielectricParts,
    ElasticParts,
    PiezoelectricParts,
    harmonic_parts,
    levi_civita,
)
from strategies import elastic_tensors, piezo_tensors, rotations

DIM = {"elastic": 21, "piezoelectric": 18, "dielectric": 6}
EPS = levi_civita()
I3 = np.eye(3)


def _random(kind, n=None, seed=0):
    rng = np.random.default_rng(seed)
    size = (DIM[kind],) if n is None else (n, DIM[kind])
    return it.compose(rng.normal(size=size), kind)


def _dev(a):
    return a - np.trace(a, axis1=-2, axis2=-1)[..., None, None] * I3 / 3.0


def _inner(a, b):
    n = a.shape[0]
    return (a.reshape(n, -1) * b.reshape(n, -1)).sum(1)


# ---------------------------------------------------------------- named quantities = their definitions


def test_elastic_named_quantities_match_definitions():
    C = _random("elastic", 5, seed=1) * 50.0
    p = harmonic_parts(C, "elastic")
    assert isinstance(p, ElasticParts) and p.kind == "elastic"
    np.testing.assert_allclose(p.bulk_modulus, np.einsum("...iijj", C) / 9.0, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(
        p.shear_modulus, (3 * np.einsum("...ijij", C) - np.einsum("...iijj", C)) / 30.0, rtol=1e-13, atol=1e-12
    )
    np.testing.assert_allclose(p.dilatational_deviator, _dev(np.einsum("...ijkk->...ij", C)), atol=1e-12)
    np.testing.assert_allclose(p.voigt_deviator, _dev(np.einsum("...ikjk->...ij", C)), atol=1e-12)
    H = p.harmonic
    for perm in [(0, 2, 1, 3, 4), (0, 1, 2, 4, 3), (0, 3, 2, 1, 4), (0, 4, 2, 3, 1)]:
        np.testing.assert_allclose(H, H.transpose(perm), atol=1e-12)  # totally symmetric
    np.testing.assert_allclose(np.einsum("...ijkk->...ij", H), 0.0, atol=1e-12)  # traceless


def test_piezo_named_quantities_match_definitions():
    e = _random("piezoelectric", 4, seed=2)
    p = harmonic_parts(e, "piezoelectric")
    assert isinstance(p, PiezoelectricParts)
    np.testing.assert_allclose(p.vector_u, np.einsum("...ikk->...i", e), atol=1e-13)
    np.testing.assert_allclose(p.vector_w, np.einsum("...kki->...i", e), atol=1e-13)
    t = np.einsum("pij,...ijk->...pk", EPS, e)
    np.testing.assert_allclose(p.pseudo_deviator, 0.5 * (t + np.swapaxes(t, -1, -2)), atol=1e-13)
    np.testing.assert_allclose(np.trace(p.pseudo_deviator, axis1=-2, axis2=-1), 0.0, atol=1e-13)
    h = p.harmonic
    np.testing.assert_allclose(h, np.swapaxes(h, -3, -2), atol=1e-13)
    np.testing.assert_allclose(h, np.swapaxes(h, -3, -1), atol=1e-13)
    np.testing.assert_allclose(np.einsum("...ikk->...i", h), 0.0, atol=1e-13)


def test_dielectric_named_quantities():
    eps = _random("dielectric", 3, seed=3) + 5 * I3
    p = harmonic_parts(eps, "dielectric")
    assert isinstance(p, DielectricParts)
    np.testing.assert_allclose(p.isotropic, np.trace(eps, axis1=1, axis2=2) / 3, atol=1e-13)
    np.testing.assert_allclose(p.deviator, _dev(eps), atol=1e-13)


# ---------------------------------------------------------------- reconstruction and orthogonality


@pytest.mark.parametrize("kind", ["elastic", "piezoelectric", "dielectric"])
def test_parts_sum_back_and_orthogonality(kind):
    T = _random(kind, 6, seed=4)
    p = harmonic_parts(T, kind)
    parts = p.cartesian_parts()
    np.testing.assert_allclose(sum(parts.values()), T, atol=1e-13)
    np.testing.assert_allclose(p.to_cartesian(), T, atol=1e-13)
    np.testing.assert_allclose(sum(p.block_parts().values()), T, atol=1e-13)
    nonorth = {"elastic": {"deviator_a", "deviator_b"}, "piezoelectric": {"vector_p", "vector_q"}}.get(kind, set())
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ip = _inner(parts[a], parts[b])
            if {a, b} == nonorth:
                assert np.abs(ip).max() > 1e-3  # genuinely not orthogonal for random tensors
            else:
                np.testing.assert_allclose(ip, 0.0, atol=1e-12, err_msg=f"{a} . {b}")
    bp = list(p.block_parts().values())
    for i in range(len(bp)):
        for j in range(i + 1, len(bp)):
            np.testing.assert_allclose(_inner(bp[i], bp[j]), 0.0, atol=1e-12)
    # each Cartesian piece has the kind's index symmetry
    for v in parts.values():
        np.testing.assert_allclose(it.compose(it.decompose(v, kind), kind), v, atol=1e-12)


def test_elastic_deviator_pieces_have_the_stated_traces():
    """d(x)a + a(x)d carries the deviators (3a, 2a); B(b) carries (4b, 5b): so d' = 3a + 4b, v' = 2a + 5b."""
    p = harmonic_parts(_random("elastic", 3, seed=5), "elastic")
    parts = p.cartesian_parts()
    A, B = parts["deviator_a"], parts["deviator_b"]
    np.testing.assert_allclose(np.einsum("...ijkk->...ij", A), 3 * p.a, atol=1e-12)
    np.testing.assert_allclose(np.einsum("...ikjk->...ij", A), 2 * p.a, atol=1e-12)
    np.testing.assert_allclose(np.einsum("...ijkk->...ij", B), 4 * p.b, atol=1e-12)
    np.testing.assert_allclose(np.einsum("...ikjk->...ij", B), 5 * p.b, atol=1e-12)
    iso = p.isotropic()
    np.testing.assert_allclose(iso, parts["bulk"] + parts["shear"], atol=1e-13)
    np.testing.assert_allclose(np.einsum("...iijj", parts["shear"]), 0.0, atol=1e-12)


# ---------------------------------------------------------------- exact relations to e3nn's blocks


def test_block_relations_float():
    C = _random("elastic", 4, seed=6)
    x = it.decompose(C, "elastic")
    p = harmonic_parts(C, "elastic")
    Y2 = it.basis("ij=ji")[1:]
    Y4 = it.basis("ijkl=jikl=ikjl=ijlk")[-9:]
    np.testing.assert_allclose(Y4, it.basis("elastic")[12:21], atol=1e-15)  # e3nn's 4e rows are Y_4
    yd = p.dilatational_deviator.reshape(4, 9) @ Y2.T
    yv = p.voigt_deviator.reshape(4, 9) @ Y2.T
    np.testing.assert_allclose(x[:, 0], 3 * p.bulk_modulus, atol=1e-13)
    np.testing.assert_allclose(x[:, 1], 2 * np.sqrt(5) * p.shear_modulus, atol=1e-13)
    np.testing.assert_allclose(x[:, 2:7], np.sqrt(2 / 3) * yd, atol=1e-13)
    np.testing.assert_allclose(x[:, 7:12], (6 * yv - 4 * yd) / np.sqrt(21), atol=1e-13)
    np.testing.assert_allclose(x[:, 12:21], p.harmonic.reshape(4, 81) @ Y4.T, atol=1e-13)
    np.testing.assert_allclose(p.irrep("dilatational_deviator"), yd, atol=1e-13)
    np.testing.assert_allclose(p.irrep("harmonic"), x[:, 12:21])
    np.testing.assert_allclose(p.irrep("bulk")[:, 0], 3 * p.bulk_modulus)
    np.testing.assert_allclose(p.irrep("shear")[:, 0], 2 * np.sqrt(5) * p.shear_modulus)

    e = _random("piezoelectric", 4, seed=7)
    y = it.decompose(e, "piezoelectric")
    q = harmonic_parts(e, "piezoelectric")
    np.testing.assert_allclose(y[:, 0:3], q.vector_w / np.sqrt(2), atol=1e-13)
    np.testing.assert_allclose(y[:, 3:6], (q.vector_w - 2 * q.vector_u) / np.sqrt(10), atol=1e-13)
    np.testing.assert_allclose(y[:, 6:11], np.sqrt(2 / 3) * q.irrep("pseudo_deviator"), atol=1e-13)
    Y3 = it.basis("ijk=jik=ikj")[-7:]
    np.testing.assert_allclose(y[:, 11:18], q.harmonic.reshape(4, 27) @ Y3.T, atol=1e-13)


def _sym_functional(w, perms):
    """Average an exact linear functional on 3**r components over the kind's index permutations."""
    import itertools

    import sympy as sp

    r = len(perms[0])
    out = {}
    for idx in itertools.product(range(3), repeat=r):
        out[idx] = sp.nsimplify(0)
    for idx in itertools.product(range(3), repeat=r):
        v = w.get(idx, 0)
        if v == 0:
            continue
        for p in perms:
            out[tuple(idx[i] for i in p)] += sp.Rational(1, len(perms)) * v
    return [sp.nsimplify(out[idx]) for idx in itertools.product(range(3), repeat=r)]


def test_block_relations_exact_sympy():
    """The relations in harmonic.py's docstring hold symbol by symbol on the exact (sympy) bases."""
    import itertools

    import sympy as sp

    Qe = it.basis("elastic", exact=True)
    Y2 = it.basis("ij=ji", exact=True)[1:, :]  # the 2e rows of the symmetric rank-2 basis = Y_2
    perms = [(0, 1, 2, 3), (1, 0, 2, 3), (0, 1, 3, 2), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 0, 1), (2, 3, 1, 0),
             (3, 2, 1, 0)]
    d = lambda a, b: 1 if a == b else 0  # noqa: E731
    idx4 = list(itertools.product(range(3), repeat=4))

    def row(fn):
        return sp.Matrix([_sym_functional({ix: fn(*ix) for ix in idx4}, perms)]).T

    def check(qrow, expected):
        assert sp.simplify(sp.Matrix(qrow).T - expected) == sp.zeros(81, 1)

    # x[0e[0]] = C_iijj / 3 ; x[0e[1]] = (C_ijij - C_iijj/3)/sqrt(5)
    check(Qe[0, :], row(lambda i, j, k, l: sp.Rational(1, 3) * d(i, j) * d(k, l)))
    check(Qe[1, :], row(lambda i, j, k, l: (d(i, k) * d(j, l) - sp.Rational(1, 3) * d(i, j) * d(k, l)) / sp.sqrt(5)))
    for m in range(5):
        Ym = lambda a, b: Y2[m, 3 * a + b]  # noqa: E731
        # x[2e[0]]_m = sqrt(2/3) Y2_m . C_ijkk
        check(Qe[2 + m, :], row(lambda i, j, k, l: sp.sqrt(sp.Rational(2, 3)) * Ym(i, j) * d(k, l)))
        # x[2e[1]]_m = (6 Y2_m . C_ikjk - 4 Y2_m . C_ijkk)/sqrt(21)
        check(Qe[7 + m, :], row(lambda i, j, k, l: (6 * Ym(i, k) * d(j, l) - 4 * Ym(i, j) * d(k, l)) / sp.sqrt(21)))


def test_rotation_covariance():
    C = _random("elastic", seed=8)
    R = it.random_rotation(seed=9)
    p, q = harmonic_parts(C, "elastic"), harmonic_parts(it.rotate(C, R, "elastic"), "elastic")
    np.testing.assert_allclose(q.bulk_modulus, p.bulk_modulus, atol=1e-13)
    np.testing.assert_allclose(q.shear_modulus, p.shear_modulus, atol=1e-13)
    np.testing.assert_allclose(q.voigt_deviator, R @ p.voigt_deviator @ R.T, atol=1e-12)
    np.testing.assert_allclose(q.harmonic, it.rotate(p.harmonic, R, "ijkl=jikl=ikjl=ijlk"), atol=1e-12)
    e = _random("piezoelectric", seed=10)
    Ri = -R  # improper: the pseudo-deviator is axial, the vectors polar
    p, q = harmonic_parts(e, "piezo"), harmonic_parts(it.rotate(e, Ri, "piezoelectric"), "piezo")
    np.testing.assert_allclose(q.vector_u, p.vector_u @ Ri.T, atol=1e-12)
    np.testing.assert_allclose(q.pseudo_deviator, np.linalg.det(Ri) * Ri @ p.pseudo_deviator @ Ri.T, atol=1e-12)


def test_isotropic_tensor_has_only_scalars():
    K, G = 150.0, 80.0
    C = it.from_voigt(np.array([[K + 4 * G / 3, K - 2 * G / 3, K - 2 * G / 3, 0, 0, 0],
                                [K - 2 * G / 3, K + 4 * G / 3, K - 2 * G / 3, 0, 0, 0],
                                [K - 2 * G / 3, K - 2 * G / 3, K + 4 * G / 3, 0, 0, 0],
                                [0, 0, 0, G, 0, 0], [0, 0, 0, 0, G, 0], [0, 0, 0, 0, 0, G]]), "elastic")
    p = harmonic_parts(C, "elastic")
    assert p.bulk_modulus == pytest.approx(K) and p.shear_modulus == pytest.approx(G)
    for a in (p.dilatational_deviator, p.voigt_deviator, p.harmonic):
        np.testing.assert_allclose(a, 0.0, atol=1e-12)


def test_voigt_input_batch_shape_and_pymatgen_input():
    C = _random("elastic", 6, seed=11).reshape(2, 3, 3, 3, 3, 3)
    p = harmonic_parts(it.to_voigt(C, "elastic"), "elastic")
    assert p.bulk_modulus.shape == (2, 3) and p.harmonic.shape == (2, 3, 3, 3, 3, 3)
    np.testing.assert_allclose(p.to_cartesian(), C, atol=1e-12)
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor

    E = ElasticTensor(C[0, 0])
    assert harmonic_parts(E, "elastic").bulk_modulus == pytest.approx(E.k_voigt, rel=1e-13)
    assert harmonic_parts(E, "elastic").shear_modulus == pytest.approx(E.g_voigt, rel=1e-13)


def test_errors():
    with pytest.raises(ValueError, match="compliance"):
        harmonic_parts(np.zeros((6, 6)), "compliance")
    with pytest.raises(ValueError, match="harmonic_parts supports"):
        harmonic_parts(np.zeros((3, 3, 3)), "ijk=jik=kji")
    with pytest.raises(ValueError, match="trailing shape"):
        harmonic_parts(np.zeros((5, 5)), "elastic")
    with pytest.raises(ValueError, match="unknown elastic part"):
        harmonic_parts(_random("elastic"), "elastic").irrep("bulk_modulus")
    with pytest.raises(ValueError, match="unknown piezoelectric part"):
        harmonic_parts(_random("piezoelectric"), "piezo").irrep("vector")
    with pytest.raises(ValueError, match="unknown dielectric part"):
        harmonic_parts(_random("dielectric"), "dielectric").irrep("trace")
    bad = _random("elastic")
    bad[0, 1, 2, 2] += 1.0
    with pytest.raises(ValueError, match="index symmetry"):
        harmonic_parts(bad, "elastic")
    harmonic_parts(bad, "elastic", symmetrize_indices=True)  # projected instead


def test_frozen():
    p = harmonic_parts(_random("dielectric"), "dielectric")
    with pytest.raises(AttributeError):
        p.isotropic = 1.0


def test_property_based_reconstruction_and_scalars():
    """Hypothesis: any coordinates (any scale) -> parts sum back; K, G, traces match their definitions."""
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    coords = arrays(np.float64, (21,), elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))

    @hyp.settings(max_examples=60, deadline=None)
    @hyp.given(coords)
    def check(x):
        C = it.compose(x, "elastic")
        p = harmonic_parts(C, "elastic")
        scale = max(1.0, np.abs(C).max())
        np.testing.assert_allclose(p.to_cartesian(), C, atol=1e-12 * scale)
        assert p.bulk_modulus == pytest.approx(np.einsum("iijj", C) / 9.0, abs=1e-12 * scale)
        np.testing.assert_allclose(np.einsum("ijkk->ij", p.harmonic), 0.0, atol=1e-12 * scale)

    check()


@settings(max_examples=30, deadline=None)
@given(elastic_tensors(), piezo_tensors(), rotations())
def test_rotation_covariance_of_drawn_tensors(C, e, R):
    """Drawn Cartesian tensors (tiny to huge but finite entries) and rotations (proper, inversions, mirrors):
    the scalars are invariant, the vectors polar, the piezoelectric deviator axial, the harmonic parts
    covariant, and the parts sum back; to 1e-12 of the largest entry (as the fixed-seed test above)."""
    atol = 1e-12 * np.abs(C).max()
    p, q = harmonic_parts(C, "elastic"), harmonic_parts(it.rotate(C, R, "elastic"), "elastic")
    np.testing.assert_allclose(q.bulk_modulus, p.bulk_modulus, rtol=0, atol=atol)
    np.testing.assert_allclose(q.shear_modulus, p.shear_modulus, rtol=0, atol=atol)
    np.testing.assert_allclose(q.voigt_deviator, R @ p.voigt_deviator @ R.T, rtol=0, atol=atol)
    np.testing.assert_allclose(q.harmonic, it.rotate(p.harmonic, R, "ijkl=jikl=ikjl=ijlk"), rtol=0, atol=atol)
    np.testing.assert_allclose(p.to_cartesian(), C, rtol=0, atol=atol)
    atol = 1e-12 * np.abs(e).max()
    p, q = harmonic_parts(e, "piezoelectric"), harmonic_parts(it.rotate(e, R, "piezoelectric"), "piezoelectric")
    np.testing.assert_allclose(q.vector_u, p.vector_u @ R.T, rtol=0, atol=atol)
    np.testing.assert_allclose(q.vector_w, p.vector_w @ R.T, rtol=0, atol=atol)
    np.testing.assert_allclose(q.pseudo_deviator, np.linalg.det(R) * R @ p.pseudo_deviator @ R.T, rtol=0, atol=atol)
    np.testing.assert_allclose(q.harmonic, it.rotate(p.harmonic, R, "ijk=jik=kji"), rtol=0, atol=atol)
    np.testing.assert_allclose(p.to_cartesian(), e, rtol=0, atol=atol)
