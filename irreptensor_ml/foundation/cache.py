"""Per-atom features of a frozen trunk, computed once and cached on disk.

A frozen trunk maps a crystal to the same features in every epoch, so a head can be trained on
stored features at the cost of the head alone.  :func:`extract_node_features` runs the trunk
over graphs in batches (no gradients, tqdm progress bar); :class:`NodeFeatures` holds the
result (all structures' rows concatenated) and gathers the rows of a mini-batch in the form the
heads take, ``head(x, batch, num_graphs)``; :func:`save_node_features` /
:func:`load_node_features` store it as plain tensors (``torch.load(weights_only=True)``);
:func:`cached_node_features` keys the file by the trunk's config and weights and the graphs'
content, under ``<cache>/foundation/``.  :class:`CachedFeatureTrunk` stands in for a frozen trunk
during training: it returns the stored rows of the crystals of a batch (by their labels), so a
head trains at the cost of the head alone.

The cached rows are the trunk's features in the layout of its ``irreps_out``: rotating a
crystal rotates them with ``Irreps(irreps).D_from_matrix(R)``, so augmentation by rotation can
be applied to the cached rows directly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from irreptensor_ml.atomic import atomic_torch_save
from irreptensor_ml.data.batch import collate
from irreptensor_ml.data.cache import (
    CACHE_VERSION,
    hash_parts,
    resolve_cache_dir,
    torch_load_plain,
)
from irreptensor_ml.data.graphs import CrystalGraph, pack_graphs

__all__ = [
    "CachedFeatureTrunk",
    "NodeFeatures",
    "cached_node_features",
    "extract_node_features",
    "load_node_features",
    "node_features_key",
    "save_node_features",
]

_FORMAT = "irreptensor-node-features-1"
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NodeFeatures:
    """Per-atom trunk features of S structures.

    Attributes:
        features: ``(N, dim)`` float, the rows of all structures concatenated in order.
        num_nodes: ``(S,)`` long, atoms per structure (``num_nodes.sum() == N``).
        irreps: irreps string of the ``dim`` columns (the trunk's ``irreps_out``).
        material_ids: S labels (the graphs' ``material_id``).
        trunk_config: the trunk's plain-dict config.
    """

    features: torch.Tensor
    num_nodes: torch.Tensor
    irreps: str
    material_ids: tuple[str, ...]
    trunk_config: dict[str, Any]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.num_nodes.ndim != 1:
            raise ValueError("NodeFeatures: features must be (N, dim) and num_nodes (S,)")
        if int(self.num_nodes.sum()) != self.features.shape[0]:
            raise ValueError(
                f"NodeFeatures: num_nodes sums to {int(self.num_nodes.sum())}, "
                f"features have {self.features.shape[0]} rows"
            )
        if len(self.material_ids) != self.num_nodes.shape[0]:
            raise ValueError("NodeFeatures: one material id per structure expected")
        offsets = torch.zeros(self.num_nodes.shape[0] + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(self.num_nodes, 0)
        object.__setattr__(self, "_offsets", offsets)

    def __len__(self) -> int:
        return int(self.num_nodes.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        """Rows ``(num_nodes[index], dim)`` of structure ``index``."""
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self.features[start:stop]

    def gather(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the structures ``indices`` and their graph index: ``(x (n, dim), batch (n,))``
        with ``batch`` in ``[0, len(indices))``, the input of ``head(x, batch, len(indices))``."""
        indices = torch.as_tensor(list(indices), dtype=torch.long)
        counts = self.num_nodes[indices]
        rows = torch.cat(
            [torch.arange(0, dtype=torch.long)]
            + [torch.arange(int(self._offsets[i]), int(self._offsets[i + 1])) for i in indices.tolist()]
        )
        batch = torch.repeat_interleave(torch.arange(len(indices)), counts)
        return self.features[rows], batch

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and lists (what :func:`save_node_features` writes)."""
        return {
            "format": _FORMAT,
            "features": self.features,
            "num_nodes": self.num_nodes,
            "irreps": self.irreps,
            "material_ids": list(self.material_ids),
            "trunk_config": dict(self.trunk_config),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "NodeFeatures":
        if state.get("format") != _FORMAT:
            raise ValueError(
                f"not a node-features file (format {state.get('format')!r}, expected {_FORMAT!r})"
            )
        return cls(
            features=state["features"],
            num_nodes=state["num_nodes"],
            irreps=str(state["irreps"]),
            material_ids=tuple(state["material_ids"]),
            trunk_config=dict(state["trunk_config"]),
        )


def extract_node_features(
    trunk: nn.Module,
    graphs: Sequence[CrystalGraph],
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> NodeFeatures:
    """Run ``trunk`` (eval mode, no gradients) over ``graphs`` in batches.

    Args:
        trunk: a trunk module (``forward(batch)``, ``irreps_out``, ``config``).
        graphs: the crystals' graphs, built with a cutoff of at least the trunk's.
        batch_size: structures per forward pass.
        dtype: storage dtype of the features (float16 halves the file; the trunk runs in its
            own dtype).
        device: where the trunk runs (default: where its parameters are).
        progress: tqdm progress bar over structures.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"extract_node_features: batch_size must be >= 1, got {batch_size}")
    param = next(trunk.parameters())
    device = param.device if device is None else torch.device(device)
    was_training = trunk.training
    trunk.eval()
    rows: list[torch.Tensor] = []
    try:
        with torch.no_grad(), tqdm(
            total=len(graphs), desc="foundation features", unit="structure", disable=not progress
        ) as bar:
            for start in range(0, len(graphs), batch_size):
                chunk = graphs[start : start + batch_size]
                batch = collate([(g, {}) for g in chunk]).to(device, param.dtype)
                rows.append(trunk(batch).to(device="cpu", dtype=dtype))
                bar.update(len(chunk))
    finally:
        trunk.train(was_training)
    return NodeFeatures(
        features=torch.cat(rows) if rows else torch.zeros(0, trunk.irreps_out.dim, dtype=dtype),
        num_nodes=torch.tensor([g.num_nodes for g in graphs], dtype=torch.long),
        irreps=str(trunk.irreps_out),
        material_ids=tuple(g.material_id for g in graphs),
        trunk_config=dict(trunk.config),
    )


def save_node_features(features: NodeFeatures, path: str | os.PathLike[str]) -> Path:
    """Write ``features`` to ``path`` atomically (``torch.save`` of plain tensors); returns it."""
    path = Path(path)
    atomic_torch_save(path, features.state_dict())
    return path


def load_node_features(path: str | os.PathLike[str]) -> NodeFeatures:
    """Read a file of :func:`save_node_features` (``weights_only=True``); ``ValueError`` if it is
    missing, corrupt or not a node-features file."""
    state = torch_load_plain(Path(path))
    if not isinstance(state, dict):
        raise ValueError(f"cannot read node features from {path}")
    return NodeFeatures.from_state_dict(state)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def node_features_key(
    trunk: nn.Module, graphs: Sequence[CrystalGraph], dtype: torch.dtype = torch.float32
) -> str:
    """SHA-256 key of (code version, trunk config and weights, graphs' content, storage dtype).

    The config's ``trainable`` flag is left out: it does not change the features."""
    import json

    config = {k: v for k, v in dict(trunk.config).items() if k != "trainable"}

    weights = [
        part for name, t in sorted(trunk.state_dict().items()) for part in (name, _tensor_bytes(t))
    ]
    packed = pack_graphs(graphs) if graphs else {}
    content = [part for name, t in sorted(packed.items()) for part in (name, _tensor_bytes(t))]
    return hash_parts(
        CACHE_VERSION, _FORMAT, json.dumps(config, sort_keys=True), str(dtype),
        *weights, *content,
    )


def cached_node_features(
    trunk: nn.Module,
    graphs: Sequence[CrystalGraph],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str = "features",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> NodeFeatures:
    """:func:`extract_node_features`, read from / written to
    ``<cache>/foundation/<name>-<key>.pt`` (key: :func:`node_features_key`).

    ``cache_dir`` defaults to ``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor``.  Material ids
    are not part of the key; they are taken from ``graphs`` on a hit.
    """
    key = node_features_key(trunk, graphs, dtype)
    path = resolve_cache_dir(cache_dir) / "foundation" / f"{name}-{key[:20]}.pt"
    if path.exists():
        try:
            found = load_node_features(path)
        except ValueError:
            logger.warning("unreadable node-features cache %s; recomputing", path)
        else:
            logger.info("node-features cache hit: %s", path)
            return dataclasses.replace(found, material_ids=tuple(g.material_id for g in graphs))
    features = extract_node_features(
        trunk, graphs, batch_size=batch_size, dtype=dtype, progress=progress
    )
    save_node_features(features, path)
    logger.info("node-features cache written: %s", path)
    return features


class CachedFeatureTrunk(nn.Module):
    """A frozen trunk replaced by its stored features: ``forward(batch)`` returns the rows of
    ``features`` of the crystals of ``batch`` (looked up by ``batch.material_ids``).

    Args:
        features: per-atom features of every crystal that batches may contain.
        index_of: crystal label (``CrystalGraph.material_id`` as the batches carry it) -> index
            of the crystal in ``features``.
        irreps_out: the irreps of the feature columns (the replaced trunk's ``irreps_out``).
        config: the replaced trunk's config (for reports; this module has no parameters).

    Raises ``KeyError`` for an unknown label and ``ValueError`` when a crystal's stored rows do
    not match its number of atoms.
    """

    def __init__(self, features: NodeFeatures, index_of: dict[str, int], irreps_out: Any,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from e3nn import o3

        self.features = features
        self.index_of = dict(index_of)
        self.irreps_out = o3.Irreps(irreps_out)
        if self.irreps_out.dim != features.features.shape[1]:
            raise ValueError(
                f"CachedFeatureTrunk: irreps_out {self.irreps_out} has dim {self.irreps_out.dim}, "
                f"features have {features.features.shape[1]} columns"
            )
        self.config = dict(config or {})

    def forward(self, batch: Any) -> torch.Tensor:
        try:
            indices = [self.index_of[m] for m in batch.material_ids]
        except KeyError as exc:
            raise KeyError(f"CachedFeatureTrunk: no stored features for crystal {exc.args[0]!r}") from None
        x, _ = self.features.gather(indices)
        if x.shape[0] != batch.species.shape[0]:
            raise ValueError(
                f"CachedFeatureTrunk: stored features have {x.shape[0]} atoms, the batch {batch.species.shape[0]}"
            )
        return x.to(device=batch.pos.device, dtype=batch.pos.dtype)
