"""Periodic radius graphs of crystal structures, with an on-disk cache.

A crystal is turned into a directed graph whose edges are all pairs of sites (i, j + image) with
distance ``<= cutoff`` (Angstrom), found by pymatgen's ``Structure.get_neighbor_list`` (a cell-list
search, not an O(N^2) loop). Periodic images are kept as Cartesian shifts so that

    edge_vec = pos[edge_index[1]] - pos[edge_index[0]] + edge_shift        (Angstrom)

A site is its own neighbor through non-zero lattice images (e.g. a one-atom cubic cell has six
nearest-neighbor edges ``i -> i``); the zero-length self pair is excluded.

:func:`build_graphs` converts many structures at once (tqdm progress bar) and caches the result
as ONE ``torch.save`` file of concatenated plain tensors per (list of structure contents, cutoff,
:data:`~irreptensor_ml.data.cache.CACHE_VERSION`), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
if TYPE_CHECKING:  # pymatgen is needed to build graphs, not to load cached ones
    from pymatgen.core import Structure

from irreptensor_ml.data.cache import (
    CACHE_VERSION,
    atomic_torch_save,
    hash_parts,
    resolve_cache_dir,
    structure_hash,
    torch_load_plain,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CrystalGraph:
    """Periodic radius graph of one crystal (all tensors on CPU as built).

    Attributes:
        species: ``(n,)`` long, atomic numbers Z.
        pos: ``(n, 3)`` float64, Cartesian positions in Angstrom (``structure.cart_coords``).
        lattice: ``(3, 3)`` float64, rows are the lattice vectors in Angstrom.
        edge_index: ``(2, E)`` long; row 0 = center atom i, row 1 = neighbor j.
        edge_shift: ``(E, 3)`` float64 Cartesian image shift in Angstrom (``image @ lattice``).
        material_id: optional label carried into :class:`~irreptensor_ml.data.batch.Batch`.
    """

    species: torch.Tensor
    pos: torch.Tensor
    lattice: torch.Tensor
    edge_index: torch.Tensor
    edge_shift: torch.Tensor
    material_id: str = ""

    @property
    def num_nodes(self) -> int:
        """Number of atoms n."""
        return int(self.species.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of directed edges E."""
        return int(self.edge_index.shape[1])

    def edge_vectors(self) -> torch.Tensor:
        """``(E, 3)`` vectors from atom i to neighbor j (Angstrom)."""
        return self.pos[self.edge_index[1]] - self.pos[self.edge_index[0]] + self.edge_shift


def structure_to_graph(structure: Structure, cutoff: float = 5.0) -> CrystalGraph:
    """Build the periodic radius graph of ``structure`` (edges with distance ``<= cutoff`` Å).

    Edges come from ``Structure.get_neighbor_list(r=cutoff)``; they are sorted by
    (i, j, image) so the graph is deterministic. Raises ``ValueError`` for a non-positive
    cutoff, an empty structure, or a disordered site (partial occupancy).
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 Angstrom, got {cutoff}")
    if len(structure) == 0:
        raise ValueError("structure has no sites")
    if not structure.is_ordered:
        raise ValueError(
            f"structure {structure.composition.reduced_formula} is disordered; "
            "a graph needs one species per site"
        )
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
    centers, neighbors, images, _ = structure.get_neighbor_list(r=float(cutoff))
    centers = np.asarray(centers, dtype=np.int64)
    neighbors = np.asarray(neighbors, dtype=np.int64)
    images = np.rint(np.asarray(images, dtype=np.float64)).reshape(-1, 3)
    order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], neighbors, centers))
    centers, neighbors, images = centers[order], neighbors[order], images[order]
    return CrystalGraph(
        species=torch.tensor([site.specie.Z for site in structure], dtype=torch.long),
        pos=torch.from_numpy(np.asarray(structure.cart_coords, dtype=np.float64).copy()),
        lattice=torch.from_numpy(lattice.copy()),
        edge_index=torch.from_numpy(np.stack([centers, neighbors])),
        edge_shift=torch.from_numpy(images @ lattice),
    )


def pack_graphs(graphs: Sequence[CrystalGraph]) -> dict[str, torch.Tensor]:
    """Concatenate graphs into a few plain tensors (loadable with ``torch.load(weights_only=True)``)."""
    return {
        "num_nodes": torch.tensor([g.num_nodes for g in graphs], dtype=torch.long),
        "num_edges": torch.tensor([g.num_edges for g in graphs], dtype=torch.long),
        "species": torch.cat([g.species for g in graphs]),
        "pos": torch.cat([g.pos for g in graphs]),
        "lattice": torch.stack([g.lattice for g in graphs]),
        "edge_index": torch.cat([g.edge_index for g in graphs], dim=1),
        "edge_shift": torch.cat([g.edge_shift for g in graphs]),
    }


def unpack_graphs(data: Mapping[str, torch.Tensor], ids: Sequence[str] | None = None) -> list[CrystalGraph]:
    """Inverse of :func:`pack_graphs`; ``ids`` sets each graph's ``material_id``."""
    nn, ne = data["num_nodes"].tolist(), data["num_edges"].tolist()
    species, pos = data["species"].split(nn), data["pos"].split(nn)
    edge_index, edge_shift = data["edge_index"].split(ne, dim=1), data["edge_shift"].split(ne)
    ids = [""] * len(nn) if ids is None else list(ids)
    return [
        CrystalGraph(species[k], pos[k], data["lattice"][k], edge_index[k], edge_shift[k], ids[k])
        for k in range(len(nn))
    ]


def _pack(graphs: Sequence[CrystalGraph], keys: list[str], cutoff: float) -> dict:
    """The on-disk cache: packed graphs plus the cache keys and settings."""
    return {"version": CACHE_VERSION, "cutoff": float(cutoff), "keys": keys, **pack_graphs(graphs)}


def _unpack(data: dict) -> list[CrystalGraph]:
    return unpack_graphs(data)


def graph_cache_path(
    structures: Sequence[Structure], cutoff: float, cache_dir: str | os.PathLike[str] | None = None,
    name: str = "graphs",
) -> Path:
    """Cache file for this exact list of structures and cutoff (``<cache>/graphs/<name>-<hash>.pt``)."""
    return _cache_path([structure_hash(s) for s in structures], cutoff, cache_dir, name)


def _cache_path(
    keys: Sequence[str], cutoff: float, cache_dir: str | os.PathLike[str] | None, name: str
) -> Path:
    digest = hash_parts(CACHE_VERSION, repr(float(cutoff)), *keys)
    return resolve_cache_dir(cache_dir) / "graphs" / f"{name}-{digest[:20]}.pt"


def build_graphs(
    structures: Sequence[Structure],
    cutoff: float = 5.0,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    name: str = "graphs",
    progress: bool = True,
) -> list[CrystalGraph]:
    """Graphs of many structures, read from / written to one cache file.

    Args:
        structures: the crystals, in the order the graphs are returned.
        cutoff: neighbor cutoff in Angstrom.
        cache_dir: cache root (default ``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor``).
        use_cache: read/write the cache file; ``False`` always rebuilds and writes nothing.
        name: human-readable prefix of the cache file name (e.g. the dataset name).
        progress: show a tqdm progress bar while building.

    The cache key covers every structure's content (lattice, species, fractional coordinates),
    the cutoff and the code version, so any change leads to a rebuild (a cache miss).
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 Angstrom, got {cutoff}")
    keys = [structure_hash(s) for s in structures] if use_cache else []
    path = _cache_path(keys, cutoff, cache_dir, name) if use_cache else None
    if path is not None and path.exists():
        data = torch_load_plain(path)
        if data is not None and len(data.get("keys", ())) == len(structures):
            logger.info("graph cache hit: %s", path)
            return _unpack(data)
        logger.warning("unreadable graph cache file %s; rebuilding", path)
    from tqdm.auto import tqdm

    graphs = [
        structure_to_graph(s, cutoff)
        for s in tqdm(structures, desc=f"graphs {name} (cutoff {cutoff} A)", disable=not progress)
    ]
    if path is not None and graphs:
        atomic_torch_save(path, _pack(graphs, keys, cutoff))
        logger.info("graph cache written: %s", path)
    return graphs
