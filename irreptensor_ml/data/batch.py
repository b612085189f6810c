"""Collate crystal graphs with (possibly missing) per-property targets into one batch.

A *sample* is ``(CrystalGraph, targets)`` with ``targets: dict[property -> Tensor(dim,)]`` holding
the properties known for that crystal, in the irrep basis and **physical units** (not
normalized; the normalizers live with the model). Graphs are concatenated into one disconnected
graph: node indices in ``edge_index`` are offset per graph and ``batch[n]`` is the graph of node n.
For every property in the batch, ``targets[prop]`` is ``(B, dim)`` with zero rows where a crystal
lacks that property and ``masks[prop]`` is ``(B,)`` bool, ``False`` there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from irreptensor_ml.data.graphs import CrystalGraph

Sample = tuple[CrystalGraph, Mapping[str, torch.Tensor]]


def edge_vectors(batch: Any) -> torch.Tensor:
    """Edge vectors ``pos[j] - pos[i] + edge_shift`` (E, 3) in Angstrom, ``i, j = edge_index``, of
    anything with those attributes (a :class:`Batch`, a graph); shared by every trunk."""
    src, dst = batch.edge_index[0], batch.edge_index[1]
    return batch.pos[dst] - batch.pos[src] + batch.edge_shift


@dataclasses.dataclass
class Batch:
    """A batch of B crystals with N atoms and E edges in total.

    Attributes:
        species: ``(N,)`` long atomic numbers.
        pos: ``(N, 3)`` float Cartesian positions (Angstrom).
        edge_index: ``(2, E)`` long, row 0 = center i, row 1 = neighbor j (batch-global indices).
        edge_shift: ``(E, 3)`` float Cartesian image shifts (Angstrom).
        batch: ``(N,)`` long, graph index of each node.
        num_graphs: B.
        material_ids: B labels (``CrystalGraph.material_id``).
        targets: ``{prop: (B, dim)}`` float, physical units in the irrep basis, zeros where masked.
        masks: ``{prop: (B,)}`` bool, ``True`` where the crystal has that property.
        lattice: ``(B, 3, 3)`` float, rows are lattice vectors (Angstrom).
    """

    species: torch.Tensor
    pos: torch.Tensor
    edge_index: torch.Tensor
    edge_shift: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    material_ids: list[str]
    targets: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    lattice: torch.Tensor | None = None

    def edge_vectors(self) -> torch.Tensor:
        """``(E, 3)`` vectors from center i to neighbor j: ``pos[j] - pos[i] + edge_shift``."""
        return edge_vectors(self)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Batch":
        """Copy to ``device`` and/or cast floating tensors to ``dtype`` (integer/bool unchanged).

        ``dtype`` may also be passed positionally: ``batch.to(torch.float32)``.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Batch(
            species=move(self.species),
            pos=move(self.pos),
            edge_index=move(self.edge_index),
            edge_shift=move(self.edge_shift),
            batch=move(self.batch),
            num_graphs=self.num_graphs,
            material_ids=list(self.material_ids),
            targets={k: move(v) for k, v in self.targets.items()},
            masks={k: move(v) for k, v in self.masks.items()},
            lattice=None if self.lattice is None else move(self.lattice),
        )

    def pin_memory(self) -> "Batch":
        """Pin CPU tensors (used by ``DataLoader(pin_memory=True)``)."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        return dataclasses.replace(
            self,
            species=pin(self.species), pos=pin(self.pos), edge_index=pin(self.edge_index),
            edge_shift=pin(self.edge_shift), batch=pin(self.batch),
            targets={k: pin(v) for k, v in self.targets.items()},
            masks={k: pin(v) for k, v in self.masks.items()},
            lattice=None if self.lattice is None else pin(self.lattice),
        )


def collate(samples: Sequence[Sample], dims: Mapping[str, int] | None = None) -> Batch:
    """Collate ``(CrystalGraph, targets)`` samples into a :class:`Batch`.

    Args:
        samples: non-empty sequence of ``(graph, {prop: Tensor(dim,)})``.
        dims: ``{prop: dim}`` of every property the batch must contain (so that each batch of a
            multi-property loader has the same keys, all-False masks included). Default: the
            properties present in ``samples``, with dims taken from them.

    Raises ``ValueError`` for an empty sample list, a target of the wrong shape, or a target
    property not listed in ``dims``.
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    if dims is None:
        found: dict[str, int] = {}
        for _, targets in samples:
            for prop, t in targets.items():
                found.setdefault(prop, int(torch.as_tensor(t).numel()))
        dims = dict(sorted(found.items()))
    num_graphs = len(samples)
    target_dtype = next(
        (torch.as_tensor(t).dtype for _, targets in samples for t in targets.values()),
        samples[0][0].pos.dtype,
    )
    out_targets = {p: torch.zeros(num_graphs, d, dtype=target_dtype) for p, d in dims.items()}
    out_masks = {p: torch.zeros(num_graphs, dtype=torch.bool) for p in dims}

    species, pos, edge_index, edge_shift, batch_idx, lattice, ids = [], [], [], [], [], [], []
    offset = 0
    for b, (graph, targets) in enumerate(samples):
        species.append(graph.species)
        pos.append(graph.pos)
        edge_index.append(graph.edge_index + offset)
        edge_shift.append(graph.edge_shift)
        batch_idx.append(torch.full((graph.num_nodes,), b, dtype=torch.long))
        lattice.append(graph.lattice)
        ids.append(graph.material_id)
        offset += graph.num_nodes
        for prop, t in targets.items():
            if prop not in dims:
                raise ValueError(f"sample {b} has target {prop!r} not in dims {sorted(dims)}")
            t = torch.as_tensor(t)
            if t.shape != (dims[prop],):
                raise ValueError(
                    f"sample {b} target {prop!r} has shape {tuple(t.shape)}, "
                    f"expected ({dims[prop]},)"
                )
            out_targets[prop][b] = t
            out_masks[prop][b] = True
    return Batch(
        species=torch.cat(species),
        pos=torch.cat(pos),
        edge_index=torch.cat(edge_index, dim=1),
        edge_shift=torch.cat(edge_shift),
        batch=torch.cat(batch_idx),
        num_graphs=num_graphs,
        material_ids=ids,
        targets=out_targets,
        masks=out_masks,
        lattice=torch.stack(lattice),
    )
