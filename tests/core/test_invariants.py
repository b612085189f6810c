"""Invariants: block norms, Voigt/Reuss/Hill moduli, anisotropy indices, distance from isotropy."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import irreptensor as it
from irreptensor.harmonic import harmonic_parts
from strategies import power_of_two_scale, rotations, tensors_of_kind
from irreptensor.invariants import (
    block_norms,
    distance_from_isotropy,
    log_euclidean_anisotropy,
    universal_anisotropy,
    vrh_moduli,
)

DATA = Path(__file__).resolve().parents[2] / "irreptensor_ml" / "datasets"


def _records(name, n):
    out = []
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def _iso(K, G):
    V = np.zeros((6, 6))
    V[:3, :3] = K - 2 * G / 3
    V[np.arange(3), np.arange(3)] = K + 4 * G / 3
    V[np.arange(3, 6), np.arange(3, 6)] = G
    return it.from_voigt(V, "elastic")


def _random_pd(n, seed):
    """Random positive-definite stiffnesses (GPa scale) via Mandel matrices A A^T + 50."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, 6, 6)) * 10
    M = A @ np.swapaxes(A, 1, 2) + 50 * np.eye(6)
    return it.from_mandel(M, "elastic")


@pytest.mark.parametrize("kind,dim", [("elastic", 21), ("piezoelectric", 18), ("dielectric", 6)])
def test_block_norms_invariant_and_complete(kind, dim):
    rng = np.random.default_rng(0)
    T = it.compose(rng.normal(size=(4, dim)), kind)
    n0 = block_norms(T, kind)
    assert list(n0) == [b.name for b in it.blocks(kind)]
    total = sum(v**2 for v in n0.values())
    np.testing.assert_allclose(total, (T.reshape(4, -1) ** 2).sum(1), rtol=1e-12)
    for proper in (True, False):
        R = it.random_rotation(4, proper=proper, seed=1)
        n1 = block_norms(it.rotate(T, R, kind), kind)
        for k in n0:
            np.testing.assert_allclose(n1[k], n0[k], rtol=1e-11, atol=1e-13)


def test_vrh_matches_pymatgen_on_dataset():
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor

    recs = _records("elastic_mp2015", 40)
    C = np.array([r["tensor"] for r in recs])
    m = vrh_moduli(C)
    au = universal_anisotropy(C)
    for i, r in enumerate(recs):
        E = ElasticTensor.from_voigt(r["voigt"])
        assert m.k_voigt[i] == pytest.approx(E.k_voigt, rel=1e-12)
        assert m.g_voigt[i] == pytest.approx(E.g_voigt, rel=1e-12)
        assert m.k_reuss[i] == pytest.approx(E.k_reuss, rel=1e-10)
        assert m.g_reuss[i] == pytest.approx(E.g_reuss, rel=1e-10)
        assert m.k_vrh[i] == pytest.approx(E.k_vrh, rel=1e-10)
        assert m.g_vrh[i] == pytest.approx(E.g_vrh, rel=1e-10)
        assert au[i] == pytest.approx(E.universal_anisotropy, rel=1e-9, abs=1e-10)
        # and the source's own K_VRH (3 decimals in the source)
        assert m.k_vrh[i] == pytest.approx(r["meta"]["K_VRH"], abs=0.01)


def test_vrh_random_batch_and_bounds():
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor

    C = _random_pd(20, seed=3).reshape(4, 5, 3, 3, 3, 3)
    m = vrh_moduli(C)
    assert m.k_voigt.shape == (4, 5)
    assert np.all(m.k_voigt >= m.k_reuss - 1e-9) and np.all(m.g_voigt >= m.g_reuss - 1e-9)  # Hill's bounds
    assert np.all(universal_anisotropy(C) >= -1e-12) and np.all(log_euclidean_anisotropy(C) >= 0)
    E = ElasticTensor(C[2, 3])
    assert m.g_reuss[2, 3] == pytest.approx(E.g_reuss, rel=1e-10)
    assert universal_anisotropy(E) == pytest.approx(E.universal_anisotropy, rel=1e-10)


def test_isotropic_and_cubic_values():
    C = _iso(120.0, 70.0)
    m = vrh_moduli(C)
    for v in (m.k_voigt, m.k_reuss, m.k_vrh):
        assert v == pytest.approx(120.0, rel=1e-12)
    for v in (m.g_voigt, m.g_reuss, m.g_vrh):
        assert v == pytest.approx(70.0, rel=1e-12)
    assert universal_anisotropy(C) == pytest.approx(0.0, abs=1e-12)
    assert log_euclidean_anisotropy(C) == pytest.approx(0.0, abs=1e-7)
    assert distance_from_isotropy(C, "elastic") == pytest.approx(0.0, abs=1e-15)
    # cubic: closed forms K_V = K_R = (C11 + 2 C12)/3, G_V = (C11 - C12 + 3 C44)/5,
    # G_R = 5 (C11 - C12) C44 / (4 C44 + 3 (C11 - C12)) (Hill 1952)
    c11, c12, c44 = 165.7, 63.9, 79.6  # Si
    V = np.zeros((6, 6))
    V[:3, :3] = c12
    V[np.arange(3), np.arange(3)] = c11
    V[np.arange(3, 6), np.arange(3, 6)] = c44
    m = vrh_moduli(V)
    assert m.k_voigt == pytest.approx((c11 + 2 * c12) / 3) and m.k_reuss == pytest.approx((c11 + 2 * c12) / 3)
    assert m.g_voigt == pytest.approx((c11 - c12 + 3 * c44) / 5)
    assert m.g_reuss == pytest.approx(5 * (c11 - c12) * c44 / (4 * c44 + 3 * (c11 - c12)))
    gv, gr = m.g_voigt, m.g_reuss
    assert universal_anisotropy(V) == pytest.approx(5 * gv / gr - 5)
    assert log_euclidean_anisotropy(V) == pytest.approx(np.sqrt(5) * np.log(gv / gr))


def test_distance_from_isotropy_is_distance_to_closest_isotropic():
    C = _random_pd(3, seed=5)
    d = distance_from_isotropy(C, "elastic", relative=False)
    iso = harmonic_parts(C, "elastic").isotropic()
    np.testing.assert_allclose(d, np.linalg.norm((C - iso).reshape(3, -1), axis=1), rtol=1e-12)
    rel = distance_from_isotropy(C, "elastic")
    np.testing.assert_allclose(rel, d / np.linalg.norm(C.reshape(3, -1), axis=1), rtol=1e-12)
    # no other isotropic tensor is closer
    rng = np.random.default_rng(6)
    p = harmonic_parts(C[0], "elastic")
    for _ in range(20):
        other = _iso(p.bulk_modulus + rng.normal() * 5, p.shear_modulus + rng.normal() * 5)
        assert np.linalg.norm(C[0] - other) >= d[0] - 1e-9
    # invariant under rotation
    R = it.random_rotation(seed=7)
    assert distance_from_isotropy(it.rotate(C[0], R, "elastic"), "elastic") == pytest.approx(rel[0], rel=1e-12)


def test_distance_from_isotropy_other_kinds():
    rng = np.random.default_rng(8)
    e = it.compose(rng.normal(size=18), "piezoelectric")
    assert distance_from_isotropy(e, "piezoelectric") == pytest.approx(1.0)  # no isotropic part at all
    assert distance_from_isotropy(np.eye(3) * 4.0, "dielectric") == pytest.approx(0.0, abs=1e-15)
    assert distance_from_isotropy(np.zeros((6, 6)), "elastic") == 0.0
    eps = np.diag([2.0, 2.0, 5.0])
    assert distance_from_isotropy(eps, "dielectric", relative=False) == pytest.approx(np.sqrt(6.0))


def test_errors():
    with pytest.raises(ValueError, match="singular"):
        vrh_moduli(np.zeros((6, 6)))
    bad = np.stack([it.to_voigt(_iso(100.0, 50.0), "elastic"), np.zeros((6, 6))])
    with pytest.raises(ValueError, match=r"batch index \(1,\)"):
        universal_anisotropy(bad)
    with pytest.raises(ValueError, match="trailing shape"):
        vrh_moduli(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown tensor kind"):
        block_norms(np.zeros((3, 3)), "dielectrik")


@settings(max_examples=30, deadline=None)
@given(kind_T=st.sampled_from(["elastic", "piezoelectric", "dielectric"]).flatmap(
    lambda k: st.tuples(st.just(k), tensors_of_kind(k, batch=(3,)))), R=rotations())
def test_block_norms_and_distance_from_isotropy_of_drawn_tensors(kind_T, R):
    """Drawn tensors (tiny to huge but finite entries) and rotations (proper and improper): the block norms
    are finite, complete (their squares sum to |T|_F^2) and invariant; so is the distance from isotropy,
    whose relative form lies in [0, 1]."""
    kind, T = kind_T
    # reference sums of squares of each tensor divided by a power of two near its largest entry (exact; the
    # squares neither overflow nor underflow)
    s = np.array([power_of_two_scale(t) for t in T])
    sq = ((T.reshape(3, -1) / s[:, None]) ** 2).sum(1)
    frob = np.sqrt(sq) * s
    n0 = block_norms(T, kind)
    assert list(n0) == [b.name for b in it.blocks(kind)]
    assert all(np.isfinite(v).all() for v in n0.values())
    np.testing.assert_allclose(sum((v / s) ** 2 for v in n0.values()), sq, rtol=1e-12)
    n1 = block_norms(it.rotate(T, R, kind), kind)
    for k in n0:
        assert np.all(np.abs(n1[k] - n0[k]) <= 1e-11 * n0[k] + 1e-13 * frob), k
    d0 = distance_from_isotropy(T, kind, relative=False)
    d1 = distance_from_isotropy(it.rotate(T, R, kind), kind, relative=False)
    assert np.isfinite(d0).all() and np.all(np.abs(d1 - d0) <= 1e-11 * d0 + 1e-13 * frob)
    r0 = distance_from_isotropy(T, kind)
    assert np.all((r0 >= 0) & (r0 <= 1 + 1e-15))
    assert np.all(np.abs(r0 * frob - d0) <= 1e-12 * frob)
