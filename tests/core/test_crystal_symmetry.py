"""symmetrize / symmetry_residual: exact group-average projection in irrep space, from matrices or structures."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import irreptensor as it
from irreptensor.crystal_symmetry import (
    group_closure,
    group_projector,
    point_group_ops,
    symmetrize,
    symmetry_residual,
)

DATA = Path(__file__).resolve().parents[2] / "irreptensor_ml" / "datasets"
DIM = {"elastic": 21, "piezoelectric": 18, "dielectric": 6}
FILES = {"elastic": "elastic_mp2015", "piezoelectric": "piezoelectric_mp2015", "dielectric": "dielectric_mp2017"}


def _records(kind, n, skip=0):
    out = []
    with gzip.open(DATA / f"{FILES[kind]}.jsonl.gz", "rt") as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def _rot(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _random(kind, n=None, seed=0):
    rng = np.random.default_rng(seed)
    return it.compose(rng.normal(size=(DIM[kind],) if n is None else (n, DIM[kind])), kind)


def test_group_closure_orders():
    c4 = _rot([0, 0, 1], np.pi / 2)
    c2x = _rot([1, 0, 0], np.pi)
    assert len(group_closure([c4])) == 4
    assert len(group_closure([c4, c2x])) == 8  # D4
    assert len(group_closure([c4, c2x, -np.eye(3)])) == 16  # D4h
    assert len(group_closure([c4, _rot([1, 1, 1], 2 * np.pi / 3)])) == 24  # O
    G = group_closure([c4, c2x])
    assert np.allclose(G[0], np.eye(3))
    prods = np.einsum("aij,bjk->abik", G, G).reshape(-1, 9)
    assert np.abs(prods[:, None, :] - G.reshape(1, -1, 9)).max(-1).min(1).max() < 1e-12  # closed


@pytest.mark.parametrize("kind", ["elastic", "piezoelectric", "dielectric"])
def test_projection_properties(kind):
    ops = group_closure([_rot([0, 0, 1], 2 * np.pi / 3), _rot([1, 0, 0], np.pi), -np.eye(3)])  # D3d
    T = _random(kind, 5, seed=1)
    S = symmetrize(T, kind, ops)
    np.testing.assert_allclose(symmetrize(S, kind, ops), S, atol=1e-12)  # idempotent
    for g in ops:  # invariant under every operation
        np.testing.assert_allclose(it.rotate(S, g, kind), S, atol=1e-12)
    d = (T - S).reshape(5, -1)
    np.testing.assert_allclose((d * S.reshape(5, -1)).sum(1), 0.0, atol=1e-12)  # orthogonal projection
    res = symmetry_residual(T, kind, ops)
    np.testing.assert_allclose(res, np.linalg.norm(d, axis=1) / np.linalg.norm(T.reshape(5, -1), axis=1),
                               rtol=1e-10)
    np.testing.assert_allclose(symmetry_residual(S, kind, ops, relative=False), 0.0, atol=1e-13)
    if kind == "piezoelectric":  # a centrosymmetric group allows no piezoelectricity
        np.testing.assert_allclose(S, 0.0, atol=1e-13)
        np.testing.assert_allclose(res, 1.0, rtol=1e-12)


def test_known_invariant_subspace_dimensions():
    """Rank of the projector = number of independent constants of each Laue class/point group."""
    c4 = _rot([0, 0, 1], np.pi / 2)
    c3 = _rot([0, 0, 1], 2 * np.pi / 3)
    c6 = _rot([0, 0, 1], np.pi / 3)
    c2x = _rot([1, 0, 0], np.pi)
    c2z = _rot([0, 0, 1], np.pi)
    c3d = _rot([1, 1, 1], 2 * np.pi / 3)
    mx = np.diag([-1.0, 1.0, 1.0])
    cases = [("elastic", [c4, c3d], 3), ("elastic", [c6, c2x], 5), ("elastic", [c4, c2x], 6),
             ("elastic", [c4], 7), ("elastic", [c3, c2x], 6), ("elastic", [c3], 7), ("elastic", [c2z, c2x], 9),
             ("elastic", [c2z], 13), ("elastic", [np.eye(3)], 21),
             ("piezoelectric", [c6, mx], 3),  # 6mm: e31, e33, e15
             ("piezoelectric", [c4, c3d], 0), ("piezoelectric", [-c4 @ c2z, c3d, mx @ _rot([1, -1, 0], np.pi)], 1),
             ("dielectric", [c3], 2), ("dielectric", [c2z], 4)]
    for kind, gens, rank in cases:
        P = group_projector(gens, kind)
        assert round(np.trace(P)) == rank, (kind, rank)
        np.testing.assert_allclose(P @ P, P, atol=1e-12)


def test_generators_equal_full_group_and_symmop_input():
    pytest.importorskip("pymatgen")
    from pymatgen.core.operations import SymmOp

    gens = [_rot([0, 0, 1], np.pi / 2), _rot([1, 0, 0], np.pi)]
    full = group_closure(gens)
    T = _random("elastic", 3, seed=2)
    np.testing.assert_allclose(symmetrize(T, "elastic", gens), symmetrize(T, "elastic", full), atol=1e-13)
    ops = [SymmOp.from_rotation_and_translation(g, [0, 0, 0]) for g in full]
    np.testing.assert_allclose(symmetrize(T, "elastic", ops), symmetrize(T, "elastic", full), atol=1e-13)
    np.testing.assert_allclose(symmetrize(T, "elastic", full[1]), symmetrize(T, "elastic", [gens[0]]),
                               atol=1e-13)  # a single matrix generates its cyclic group


@pytest.mark.parametrize("kind", ["elastic", "piezoelectric", "dielectric"])
def test_matches_pymatgen_fit_to_structure(kind):
    pytest.importorskip("pymatgen")
    from pymatgen.core import Structure
    from pymatgen.core.tensors import Tensor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for r in _records(kind, 4, skip=3):
        s = Structure.from_dict(r["structure"])
        T = np.array(r["tensor"])
        ours = symmetrize(T, kind, s, symprec=0.01)
        theirs = np.array(Tensor(T).fit_to_structure(s, symprec=0.01))
        # spglib's Cartesian matrices are orthogonal only to the lattice's precision; pymatgen averages them
        # as they are, we use the nearest orthogonal ones: the results differ by about rank * that deviation
        R = np.array([o.rotation_matrix for o in SpacegroupAnalyzer(s, 0.01).get_point_group_operations(True)])
        dev = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max()
        atol = (1e-10 + 4 * T.ndim * dev) * np.abs(T).max()
        np.testing.assert_allclose(ours, theirs, atol=atol, err_msg=r["material_id"])
        # the dataset's residual max_g |gT - T| / |T| bounds ours: |T - PT| <= max_g |T - gT|
        assert symmetry_residual(T, kind, s) <= r["meta"]["sym_residual"] + 1e-6
        # a structure dict works too, and the layout of the input is kept
        V = it.to_voigt(T, kind)
        np.testing.assert_allclose(symmetrize(V, kind, r["structure"]), it.to_voigt(ours, kind), atol=1e-9)


def test_point_group_ops_of_a_structure():
    pytest.importorskip("pymatgen")
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for r in _records("elastic", 4):
        s = Structure.from_dict(r["structure"])
        G = point_group_ops(s)
        sga = SpacegroupAnalyzer(s, symprec=0.01)
        assert len(G) == len(sga.get_point_group_operations())
        np.testing.assert_allclose(np.einsum("gij,gkj->gik", G, G), np.broadcast_to(np.eye(3), G.shape),
                                   atol=1e-12)
        # the tensor of the record (structure frame) is invariant under them up to the data's own residual
        assert symmetry_residual(np.array(r["tensor"]), "elastic", G) <= r["meta"]["sym_residual"] + 1e-6


def test_batch_shapes_and_pymatgen_tensor_input():
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.elasticity import ElasticTensor

    ops = [_rot([0, 0, 1], np.pi / 2)]
    T = _random("elastic", 6, seed=3).reshape(2, 3, 3, 3, 3, 3)
    S = symmetrize(T, "elastic", ops)
    assert S.shape == T.shape
    np.testing.assert_allclose(S[1, 2], symmetrize(T[1, 2], "elastic", ops), atol=1e-13)
    assert symmetry_residual(T, "elastic", ops).shape == (2, 3)
    E = ElasticTensor(T[0, 0])
    np.testing.assert_allclose(symmetrize(E, "elastic", ops), S[0, 0], atol=1e-13)
    assert symmetry_residual(np.zeros((6, 6)), "elastic", ops) == 0.0
    np.testing.assert_allclose(symmetry_residual(T[0], "elastic", ops, relative=False),
                               np.linalg.norm((T[0] - S[0]).reshape(3, -1), axis=1), rtol=1e-10)


def test_errors():
    T = _random("elastic")
    with pytest.raises(ValueError, match="needs ops"):
        symmetrize(T, "elastic")
    with pytest.raises(ValueError, match="needs ops"):
        symmetry_residual(T, "elastic")
    with pytest.raises(ValueError, match="not orthogonal"):
        symmetrize(T, "elastic", [np.diag([1.0, 2.0, 1.0])])
    with pytest.raises(ValueError, match="finite point group"):
        symmetrize(T, "elastic", [_rot([0, 0, 1], 1.0)])  # irrational rotation: infinite group
    with pytest.raises(ValueError, match=r"\(G, 3, 3\)"):
        symmetrize(T, "elastic", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lattice"):
        symmetrize(T, "elastic", {"sites": []})
    pytest.importorskip("pymatgen")
    from pymatgen.core import Molecule

    with pytest.raises(ValueError, match="lattice"):
        symmetrize(T, "elastic", Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(ValueError, match="lattice"):
        point_group_ops(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(ValueError, match="trailing shape"):
        symmetrize(np.zeros((4, 4)), "elastic", [np.eye(3)])


@pytest.mark.parametrize("tol", [float("nan"), -1e-6])
def test_bad_tolerances_are_refused(tol):
    """A NaN match tolerance kept only the identity in group_closure (a symmetrize that did nothing); spglib
    crashed the process on a NaN or negative symprec."""
    ops = [np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, 1.0])]
    assert len(group_closure(ops)) == 4
    with pytest.raises(ValueError, match=rf"tol must be a finite number >= 0, got {tol!r}"):
        group_closure(ops, tol=tol)
    r = _records("piezoelectric", 1)[0]
    with pytest.raises(ValueError, match=rf"symprec must be a finite number > 0, got {tol!r}"):
        point_group_ops(r["structure"], symprec=tol)
    with pytest.raises(ValueError, match="symprec must be a finite number > 0"):
        symmetrize(_random("piezoelectric"), "piezoelectric", r["structure"], symprec=tol)
