"""Tests for irreptensor_ml.data.graphs: edges vs. a brute-force reference, cutoff, cache."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data import graphs as graphs_mod
from irreptensor_ml.data.graphs import build_graphs, graph_cache_path, structure_to_graph
from irreptensor_ml.data.records import load_records


def _brute_force_edges(structure: Structure, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    """Reference (test only): all (i, j, image) with 0 < |r_j + image@L - r_i| <= cutoff."""
    lat = structure.lattice.matrix
    vol = abs(np.linalg.det(lat))
    # number of images needed along each lattice vector: cutoff / (distance between planes)
    reach = [math.ceil(cutoff * np.linalg.norm(np.cross(lat[(a + 1) % 3], lat[(a + 2) % 3])) / vol) + 1
             for a in range(3)]
    pos = structure.cart_coords
    edges = set()
    ranges = [range(-r, r + 1) for r in reach]
    for i, j in itertools.product(range(len(structure)), repeat=2):
        for img in itertools.product(*ranges):
            d = np.linalg.norm(pos[j] + np.array(img) @ lat - pos[i])
            if 1e-8 < d <= cutoff:
                edges.add((i, j, *img))
    return edges


def _graph_edges(graph) -> set[tuple[int, int, int, int, int]]:
    lat = graph.lattice.numpy()
    images = np.rint(graph.edge_shift.numpy() @ np.linalg.inv(lat)).astype(int)
    return {(int(i), int(j), *map(int, img))
            for (i, j), img in zip(graph.edge_index.T.tolist(), images)}


def _skewed_cell() -> Structure:
    # triclinic, with fractional coordinates outside [0, 1) on purpose
    lattice = Lattice.from_parameters(3.1, 3.7, 4.3, 71.0, 82.0, 104.0)
    return Structure(lattice, ["Si", "O", "O"], [[1.2, -0.3, 0.1], [0.45, 0.5, 0.55], [0.9, 0.05, -0.7]])


CELLS = {
    "fcc_Cu": (Structure(Lattice([[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]]), ["Cu"], [[0, 0, 0]]), 4.0),
    "skewed": (_skewed_cell(), 4.5),
    "rocksalt_conv": (Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                                [[0, 0, 0], [0.5, 0.5, 0.5]]), 4.1),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_edges_equal_brute_force(name: str) -> None:
    structure, cutoff = CELLS[name]
    graph = structure_to_graph(structure, cutoff)
    reference = _brute_force_edges(structure, cutoff)
    assert graph.num_edges == len(reference) > 0
    assert _graph_edges(graph) == reference


@pytest.mark.parametrize("name", sorted(CELLS))
def test_edge_vectors_and_layout(name: str) -> None:
    structure, cutoff = CELLS[name]
    g = structure_to_graph(structure, cutoff)
    assert g.species.dtype == torch.long and g.species.tolist() == [s.specie.Z for s in structure]
    assert g.pos.dtype == torch.float64 and g.pos.shape == (len(structure), 3)
    assert torch.allclose(g.pos, torch.tensor(structure.cart_coords))
    assert g.lattice.shape == (3, 3) and torch.allclose(g.lattice, torch.tensor(structure.lattice.matrix))
    assert g.edge_index.dtype == torch.long and g.edge_index.shape == (2, g.num_edges)
    assert g.edge_shift.shape == (g.num_edges, 3)
    vec = g.pos[g.edge_index[1]] - g.pos[g.edge_index[0]] + g.edge_shift
    assert torch.equal(vec, g.edge_vectors())
    lengths = vec.norm(dim=1)
    assert bool((lengths <= cutoff + 1e-9).all()) and bool((lengths > 1e-8).all())
    # every directed edge has its reverse (j -> i with the opposite shift)
    pairs = list(zip(g.edge_index.T.tolist(), np.round(g.edge_shift.numpy(), 6).tolist()))
    fwd = {(i, j, *s) for (i, j), s in pairs}
    rev = {(j, i, *(-x for x in s)) for (i, j), s in pairs}
    assert fwd == rev


def test_fcc_has_twelve_nearest_neighbours() -> None:
    structure, _ = CELLS["fcc_Cu"]
    g = structure_to_graph(structure, 2.6)  # nearest-neighbour distance 1.8*sqrt(2) = 2.55
    assert g.num_edges == 12
    expected = torch.full((12,), 1.8 * math.sqrt(2), dtype=torch.float64)
    assert torch.allclose(g.edge_vectors().norm(dim=1), expected)


def test_invalid_inputs_raise() -> None:
    structure, _ = CELLS["fcc_Cu"]
    with pytest.raises(ValueError, match="cutoff"):
        structure_to_graph(structure, 0.0)
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        structure_to_graph(disordered, 4.0)


def test_cache_hit_and_miss_on_content_change(tmp_path: Path, monkeypatch) -> None:
    structures = [CELLS[n][0] for n in sorted(CELLS)]
    first = build_graphs(structures, 4.0, cache_dir=tmp_path, name="t", progress=False)
    path = graph_cache_path(structures, 4.0, tmp_path, name="t")
    assert path.exists() and len(list((tmp_path / "graphs").iterdir())) == 1

    calls = []
    real = graphs_mod.structure_to_graph
    monkeypatch.setattr(graphs_mod, "structure_to_graph", lambda s, c: calls.append(1) or real(s, c))
    second = build_graphs(structures, 4.0, cache_dir=tmp_path, name="t", progress=False)
    assert calls == []  # hit: nothing rebuilt
    for a, b in zip(first, second):
        for field in ("species", "pos", "lattice", "edge_index", "edge_shift"):
            assert torch.equal(getattr(a, field), getattr(b, field))

    moved = structures[1].copy()
    moved.translate_sites([0], [0.01, 0.0, 0.0])
    changed = [structures[0], moved, structures[2]]
    third = build_graphs(changed, 4.0, cache_dir=tmp_path, name="t", progress=False)
    assert len(calls) == 3  # miss: content changed
    assert not torch.equal(third[1].pos, first[1].pos)
    build_graphs(structures, 4.5, cache_dir=tmp_path, name="t", progress=False)
    assert len(calls) == 6  # miss: cutoff changed
    assert len(list((tmp_path / "graphs").glob("*.pt"))) == 3
    # use_cache=False neither reads nor writes
    build_graphs(structures, 4.0, cache_dir=tmp_path, use_cache=False, progress=False)
    assert len(calls) == 9 and len(list((tmp_path / "graphs").glob("*.pt"))) == 3


def test_cache_file_is_weights_only_loadable(tmp_path: Path) -> None:
    structures = [CELLS["skewed"][0]]
    build_graphs(structures, 4.0, cache_dir=tmp_path, name="w", progress=False)
    data = torch.load(graph_cache_path(structures, 4.0, tmp_path, name="w"), weights_only=True)
    assert data["cutoff"] == 4.0 and data["edge_index"].shape[0] == 2


def test_real_elastic_structures(tmp_path: Path) -> None:
    recs = load_records("elastic", "mp", check_symmetry=False, cache_dir=tmp_path)
    structures = [r.structure for r in recs[:20]]
    graphs = build_graphs(structures, 5.0, cache_dir=tmp_path, name="elastic", progress=False)
    assert len(graphs) == 20
    for s, g in zip(structures, graphs):
        assert g.num_nodes == len(s) and g.num_edges > 0
        assert float(g.edge_vectors().norm(dim=1).max()) <= 5.0 + 1e-9
        assert set(g.edge_index[0].tolist()) == set(range(len(s)))  # no isolated atom at 5 A
