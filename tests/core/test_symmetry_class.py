"""symmetry_class: the 8 Forte-Vianello classes in random orientations, noise, eigenvalue mimics, degenerate cases."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import irreptensor as it
from irreptensor.symmetry_class import ELASTIC_CLASSES, SymmetryClass, class_projector, symmetry_class

DATA = Path(__file__).resolve().parents[2] / "irreptensor_ml" / "datasets"
RANKS = {"isotropic": 2, "cubic": 3, "transversely_isotropic": 5, "tetragonal": 6, "trigonal": 6,
         "orthotropic": 9, "monoclinic": 13, "triclinic": 21}


def _class_tensor(name, rng):
    """A generic tensor of the class in its standard frame: a random vector projected onto the class."""
    x = class_projector(name) @ rng.normal(size=21)
    return it.compose(x, "elastic")


def _kelvin_eigs(C):
    return np.sort(np.linalg.eigvalsh(it.to_mandel(C, "elastic")))


def _multiplicities(eigs, tol=1e-9):
    groups, count = [], 1
    for a, b in zip(eigs[:-1], eigs[1:]):
        if abs(b - a) <= tol * max(1.0, abs(b)):
            count += 1
        else:
            groups.append(count)
            count = 1
    return sorted(groups + [count])


def _class_residual_in_frame(C, name, frame):
    y = it.decompose(it.rotate(C, frame, "elastic"), "elastic")
    return np.linalg.norm(y - class_projector(name) @ y) / np.linalg.norm(y)


def test_projector_ranks():
    for name in ELASTIC_CLASSES:
        P = class_projector(name)
        np.testing.assert_allclose(P @ P, P, atol=1e-12)
        np.testing.assert_allclose(P, P.T, atol=1e-15)
        assert round(np.trace(P)) == RANKS[name]
    with pytest.raises(ValueError, match="unknown elastic symmetry class"):
        class_projector("hexagonal")


@pytest.mark.parametrize("name", ELASTIC_CLASSES)
def test_each_class_in_random_orientations(name):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for trial in range(3):
        C0 = _class_tensor(name, rng)
        R = it.random_rotation(seed=int(rng.integers(2**31)))
        C = it.rotate(C0, R, "elastic")
        res = symmetry_class(C, "elastic", tol=1e-6)
        assert isinstance(res, SymmetryClass)
        assert res.name == name, (trial, res.residuals)
        assert res.residual < 1e-9
        # the frame really is a symmetry frame of the class: rotate(C, frame) is in standard form
        assert _class_residual_in_frame(C, name, res.frame) < 1e-9
        np.testing.assert_allclose(res.frame @ res.frame.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(res.frame) == pytest.approx(1.0)
        np.testing.assert_allclose(res.projection, C, atol=1e-9 * np.abs(C).max())
        expected_planes = {"cubic": 9, "tetragonal": 5, "trigonal": 3, "orthotropic": 3, "monoclinic": 1,
                           "triclinic": 0}
        if name in expected_planes:
            assert res.n_symmetry_planes == expected_planes[name]


@pytest.mark.parametrize("name", ELASTIC_CLASSES)
def test_noise_below_tol_keeps_the_class(name):
    rng = np.random.default_rng(100 + ELASTIC_CLASSES.index(name))
    for _ in range(2):
        C0 = it.rotate(_class_tensor(name, rng), it.random_rotation(seed=int(rng.integers(2**31))), "elastic")
        noise = it.compose(rng.normal(size=21), "elastic")
        C = C0 + 2e-3 * np.linalg.norm(C0) * noise / np.linalg.norm(noise)
        res = symmetry_class(C, "elastic", tol=1e-2)
        assert res.name == name, res.residuals
        assert res.residual <= 1e-2
        assert (res.residual > 0) == (name != "triclinic")  # noise is seen, but not above tol
        # the reported residual is the true distance to the returned projection, which has the class
        assert np.linalg.norm(C - res.projection) / np.linalg.norm(C) == pytest.approx(res.residual, rel=1e-6)
        assert _class_residual_in_frame(res.projection, name, res.frame) < 1e-9


def test_noise_above_tol_lowers_the_class():
    rng = np.random.default_rng(7)
    C0 = it.rotate(_class_tensor("cubic", rng), it.random_rotation(seed=8), "elastic")
    noise = it.compose(rng.normal(size=21), "elastic")
    C = C0 + 0.2 * np.linalg.norm(C0) * noise / np.linalg.norm(noise)
    res = symmetry_class(C, "elastic", tol=1e-3)
    assert res.name == "triclinic"
    assert len(res.axes) == 0  # not even a two-fold axis within 3 tol


def test_orthotropic_with_cubic_eigenvalue_multiplicities():
    """Kelvin eigenvalues with multiplicities (1, 2, 3) like a cubic tensor, but only orthotropic symmetry."""
    n = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)  # not the dilatation (1,1,1)/sqrt(3)
    N = np.zeros((6, 6))
    N[:3, :3] = np.outer(n, n)
    Pn = np.zeros((6, 6))
    Pn[:3, :3] = np.eye(3) - np.outer(n, n)
    Ps = np.zeros((6, 6))
    Ps[3:, 3:] = np.eye(3)
    C0 = it.from_mandel(300.0 * N + 80.0 * Pn + 50.0 * Ps, "elastic")
    assert _multiplicities(_kelvin_eigs(C0)) == [1, 2, 3]  # exactly the cubic pattern
    C = it.rotate(C0, it.random_rotation(seed=11), "elastic")
    res = symmetry_class(C, "elastic", tol=1e-6)
    assert res.name == "orthotropic"
    assert res.residuals["cubic"] > 1e-2


def test_orthotropic_with_transversely_isotropic_multiplicities():
    """Multiplicities (1, 1, 2, 2) like a transversely isotropic tensor, but orthotropic."""
    rng = np.random.default_rng(12)
    Qn, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    M = np.zeros((6, 6))
    lam = [200.0, 90.0, 140.0]
    M[:3, :3] = Qn @ np.diag(lam) @ Qn.T
    M[3:, 3:] = np.diag([200.0, 90.0, 60.0])  # shear eigenvalues repeat two normal-strain ones
    C0 = it.from_mandel(M, "elastic")
    assert _multiplicities(_kelvin_eigs(C0)) == [1, 1, 2, 2]
    res = symmetry_class(it.rotate(C0, it.random_rotation(seed=13), "elastic"), "elastic", tol=1e-6)
    assert res.name == "orthotropic"


@pytest.mark.parametrize("name", ["tetragonal", "trigonal", "transversely_isotropic", "orthotropic"])
def test_vanishing_deviators(name):
    """With both second-order deviators zero, only the harmonic part H carries the symmetry axes."""
    rng = np.random.default_rng(21)
    x = class_projector(name) @ rng.normal(size=21)
    x[2:12] = 0.0
    C = it.rotate(it.compose(x, "elastic"), it.random_rotation(seed=22), "elastic")
    res = symmetry_class(C, "elastic", tol=1e-6)
    assert res.name == name


def test_harmonic_only_cubic_and_deviator_only_tensor():
    rng = np.random.default_rng(31)
    x = class_projector("cubic") @ rng.normal(size=21)
    x[:2] = 0.0  # pure harmonic: no isotropic part at all
    C = it.rotate(it.compose(x, "elastic"), it.random_rotation(seed=1), "elastic")
    assert symmetry_class(C, "elastic").name == "cubic"
    # deviators uniaxial and H = 0: transversely isotropic
    x = class_projector("transversely_isotropic") @ rng.normal(size=21)
    x[12:] = 0.0
    C = it.rotate(it.compose(x, "elastic"), it.random_rotation(seed=2), "elastic")
    assert symmetry_class(C, "elastic").name == "transversely_isotropic"


def test_near_isotropic_threshold():
    rng = np.random.default_rng(41)
    iso = it.compose(class_projector("isotropic") @ (10 * rng.normal(size=21)), "elastic")
    cub = _class_tensor("cubic", rng)
    cub_aniso = cub - it.compose(class_projector("isotropic") @ it.decompose(cub, "elastic"), "elastic")
    d = cub_aniso / np.linalg.norm(cub_aniso) * np.linalg.norm(iso)
    small = it.rotate(iso + 1e-4 * d, it.random_rotation(seed=3), "elastic")
    assert symmetry_class(small, "elastic", tol=1e-3).name == "isotropic"
    assert symmetry_class(small, "elastic", tol=1e-6).name == "cubic"


def test_zero_and_scalar_multiple_and_inputs():
    assert symmetry_class(np.zeros((6, 6)), "elastic").name == "isotropic"
    rng = np.random.default_rng(51)
    C = it.rotate(_class_tensor("tetragonal", rng), it.random_rotation(seed=4), "elastic")
    assert symmetry_class(1e6 * C, "elastic").name == "tetragonal"  # scale invariant
    assert symmetry_class(it.to_voigt(C, "elastic"), "elastic").name == "tetragonal"  # Voigt input
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor

    assert symmetry_class(ElasticTensor(C), "elastic").name == "tetragonal"  # pymatgen input
    assert symmetry_class(C, "compliance").name == "tetragonal"
    # a compliance in Voigt form (factors 2 and 4 on shear entries) is read with its own convention
    # + isotropic: still tetragonal
    S = np.linalg.inv(it.to_voigt(C + it.from_mandel(100 * np.eye(6), "elastic"), "elastic"))
    res = symmetry_class(S, "compliance", tol=1e-6)
    assert res.name == "tetragonal"
    assert symmetry_class(it.from_voigt(S, "compliance"), "compliance", tol=1e-6).name == "tetragonal"


def test_real_materials_match_crystal_system():
    """Materials Project tensors (structure frame) have at least their crystal system's elastic class."""
    expected = {"mp-149": "cubic", "mp-1143": "trigonal", "mp-804": "transversely_isotropic",
                "mp-554278": "monoclinic"}
    found = {}
    with gzip.open(DATA / "elastic_mp2015.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["material_id"] in expected:
                found[r["material_id"]] = np.array(r["tensor"])
    assert set(found) == set(expected)
    for mid, cls in expected.items():
        R = it.random_rotation(seed=5)
        res = symmetry_class(it.rotate(found[mid], R, "elastic"), "elastic", tol=1e-2)
        assert res.name == cls, (mid, res.residuals)


def test_errors():
    with pytest.raises(ValueError, match="elastic tensors"):
        symmetry_class(np.zeros((3, 6)), kind="piezoelectric")
    with pytest.raises(ValueError, match="one tensor"):
        symmetry_class(np.zeros((2, 6, 6)), "elastic")
    with pytest.raises(ValueError, match="tol"):
        symmetry_class(np.eye(6), "elastic", tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        symmetry_class(np.eye(6), "elastic", tol=float("nan"))
    with pytest.raises(ValueError, match="trailing shape"):
        symmetry_class(np.zeros((5, 5)), "elastic")
    asym = np.eye(6)
    asym[0, 1] = 1.0
    with pytest.raises(ValueError, match="index symmetry"):
        symmetry_class(asym, "elastic")
    assert symmetry_class(asym, "elastic", symmetrize_indices=True).name in ELASTIC_CLASSES
