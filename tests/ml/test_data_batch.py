"""Tests for irreptensor_ml.data.batch.collate and Batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data.batch import Batch, collate
from irreptensor_ml.data.graphs import structure_to_graph


def _graphs():
    a = structure_to_graph(Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]]), 3.5)
    b = structure_to_graph(Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]), 4.2)
    c = structure_to_graph(
        Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "Zn", "O", "O"],
                  [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]]),
        3.5,
    )
    return [dataclasses.replace(g, material_id=f"m{k}") for k, g in enumerate((a, b, c))]


def _samples():
    ga, gb, gc = _graphs()
    t = lambda n, v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return [
        (ga, {"elastic": t(21, 1)}),
        (gb, {"dielectric": t(6, 2), "elastic": t(21, 3)}),
        (gc, {"dielectric": t(6, 4)}),
    ]


def test_collate_offsets_and_edge_vectors() -> None:
    samples = _samples()
    batch = collate(samples)
    sizes = [g.num_nodes for g, _ in samples]
    assert batch.num_graphs == 3 and batch.material_ids == ["m0", "m1", "m2"]
    assert batch.species.shape == (sum(sizes),) and batch.pos.shape == (sum(sizes), 3)
    assert batch.batch.tolist() == [0] * sizes[0] + [1] * sizes[1] + [2] * sizes[2]
    assert batch.lattice.shape == (3, 3, 3)
    expected_vec = torch.cat([g.edge_vectors() for g, _ in samples])
    assert torch.equal(batch.edge_vectors(), expected_vec)
    # every edge stays inside its own graph
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
    offset = 0
    start = 0
    for g, _ in samples:
        ei = batch.edge_index[:, start:start + g.num_edges]
        assert torch.equal(ei, g.edge_index + offset)
        offset += g.num_nodes
        start += g.num_edges


def test_collate_masks_and_missing_targets() -> None:
    batch = collate(_samples())
    assert sorted(batch.targets) == ["dielectric", "elastic"]
    assert batch.masks["elastic"].tolist() == [True, True, False]
    assert batch.masks["dielectric"].tolist() == [False, True, True]
    assert batch.targets["elastic"].shape == (3, 21) and batch.targets["dielectric"].shape == (3, 6)
    assert bool((batch.targets["elastic"][2] == 0).all())
    assert bool((batch.targets["dielectric"][0] == 0).all())
    assert bool((batch.targets["elastic"][1] == 3).all())
    assert batch.masks["elastic"].dtype == torch.bool


def test_collate_with_declared_dims_adds_absent_properties() -> None:
    samples = _samples()[:1]
    batch = collate(samples, dims={"elastic": 21, "piezoelectric": 18})
    assert batch.masks["piezoelectric"].tolist() == [False]
    assert batch.targets["piezoelectric"].shape == (1, 18)
    with pytest.raises(ValueError, match="not in dims"):
        collate(_samples(), dims={"elastic": 21})
    with pytest.raises(ValueError, match=r"expected \(18,\)"):
        collate(samples, dims={"elastic": 18})
    with pytest.raises(ValueError, match="at least one"):
        collate([])


def test_batch_to_dtype_keeps_integer_tensors() -> None:
    batch = collate(_samples())
    b32 = batch.to(dtype=torch.float32)
    assert b32.pos.dtype == torch.float32 and b32.edge_shift.dtype == torch.float32
    assert b32.targets["elastic"].dtype == torch.float32 and b32.lattice.dtype == torch.float32
    assert b32.species.dtype == torch.long and b32.edge_index.dtype == torch.long
    assert b32.masks["elastic"].dtype == torch.bool and b32.batch.dtype == torch.long
    assert isinstance(batch.to(torch.float32), Batch)
    assert batch.to("cpu").pos.dtype == torch.float64
    with pytest.raises(ValueError, match="floating"):
        batch.to(dtype=torch.int32)


def test_lightning_moves_batch_as_a_whole() -> None:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    batch = collate(_samples())
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, Batch) and moved.num_graphs == 3
    assert moved.masks["elastic"].tolist() == batch.masks["elastic"].tolist()
