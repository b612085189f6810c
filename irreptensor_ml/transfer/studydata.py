"""All data of a transfer study in one object, exportable to one weights-only file.

:class:`StudyData` holds every sample of every property of the union split -- periodic graphs,
irrep-basis targets in physical units, the material key and split side of each sample and the
record uids merged into it -- built once by :class:`~irreptensor_ml.data.TensorDataModule`
(with ``train_fraction = 1``). The runs of a study then select their samples from it:

* :meth:`StudyData.indices` -- the samples of one split side that have a given property;
* :meth:`StudyData.train_subset` -- a deterministic, *nested* subsample of a property's training
  materials (learning curves), drawn per seed;
* :meth:`StudyData.dataset` -- a :class:`~irreptensor_ml.data.GraphTargetDataset` with only the
  requested targets.

Besides the properties, the samples keep the additive *parts* of a property's tensor that the data
files give (:data:`irreptensor_ml.data.records.PARTS`: the dielectric tensor's electronic and
ionic parts), under the data module's keys ``"<property>_<part>"`` (``"dielectric_electronic"``,
the refractive-index quantity). Every selection method takes such a part key wherever it takes a
property (:func:`target_property` maps it to its property). The parts are left out of
:attr:`StudyData.fingerprint` (so the run ids of studies that do not use them stay what they were)
and hashed into :attr:`StudyData.parts_fingerprint` instead, which the runs that train on them
carry in their ids.

Because the split sides come from the data module's union split (one split over the materials
of ALL data files, see :mod:`irreptensor_ml.data.splits`), a material in the test set of any
property is in no property's training or validation set -- including the elastic pretraining
set. :meth:`StudyData.check_union_split` verifies this on the loaded data.

:meth:`StudyData.save` writes everything into one ``torch.save`` file of plain tensors, strings,
numbers, lists and dicts, so :meth:`StudyData.load` reads it with ``torch.load(weights_only=True)``
and needs neither pymatgen nor the original data files (``irreptensor-ml transfer
--export-cache FILE`` on a machine with pymatgen, ``--from-cache FILE`` anywhere else).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from irreptensor_ml.atomic import atomic_torch_save
from irreptensor_ml.data.batch import collate
from irreptensor_ml.data.cache import hash_parts
from irreptensor_ml.data.datamodule import GraphTargetDataset
from irreptensor_ml.data.graphs import CrystalGraph, pack_graphs, unpack_graphs
from irreptensor_ml.transfer.registry import PART_TARGETS, target_property  # noqa: F401  (re-exported)

__all__ = ["CACHE_FORMAT", "PART_TARGETS", "PROPERTIES", "StudyData", "subsample_keys", "target_property"]

#: ``format`` entry of an exported cache file.
CACHE_FORMAT = "irreptensor_ml.transfer.studydata"
CACHE_FORMAT_VERSION = 1
#: properties a study data object always holds (the pretraining and the target properties).
PROPERTIES: tuple[str, ...] = ("elastic", "dielectric", "piezoelectric")
SIDES: tuple[str, ...] = ("train", "val", "test")
#: data-config entries that do not change the data (left out of the fingerprint).
_NOT_CONTENT = ("cache_dir", "num_workers", "progress", "batch_size", "dtype")


def subsample_keys(keys: Sequence[str], fraction: float, seed: int) -> set[str]:
    """Deterministic subset of ``round(fraction * n)`` (at least 1) of the distinct ``keys``.

    Keys are ranked by ``sha256("subsample", seed, key)`` -- the rule of
    :func:`irreptensor_ml.data.splits.subsample_keys` -- so the subsets of growing fractions are
    nested for a fixed seed and independent of the input order.
    """
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(set(keys), key=lambda k: hash_parts("subsample", str(int(seed)), k))
    if not ordered:
        return set()
    return set(ordered[: max(1, round(float(fraction) * len(ordered)))])


@dataclasses.dataclass
class StudyData:
    """Every sample of the union split, with targets of all properties measured on it.

    Attributes:
        graphs: one :class:`CrystalGraph` per sample.
        targets: per sample ``{property: Tensor(dim,) float64}`` (physical irrep units) for the
            properties measured on that exact structure, plus ``{"<property>_<part>": ...}`` for
            the parts of a property the data give (:data:`PART_TARGETS`).
        material_keys: material key per sample (the union split's grouping).
        sides: ``"train"``, ``"val"`` or ``"test"`` per sample.
        record_uids: per sample the record uids (``"<file>:<material_id>"``) merged into it.
        irreps: ``{property: irreps string}``.
        data_config: the data settings that built it (``DataConfig.to_dict()``).
        provenance: data-file hashes, data summary, creation time.
    """

    graphs: list[CrystalGraph]
    targets: list[dict[str, torch.Tensor]]
    material_keys: list[str]
    sides: list[str]
    record_uids: list[list[str]]
    irreps: dict[str, str]
    data_config: dict[str, Any]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.graphs)
        for name in ("targets", "material_keys", "sides", "record_uids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"StudyData: {name} has {len(getattr(self, name))} entries for {n} graphs")
        bad = sorted(set(self.sides) - set(SIDES))
        if bad:
            raise ValueError(f"StudyData: unknown split side(s) {bad}; expected {SIDES}")
        for k, t in enumerate(self.targets):
            unknown = sorted(key for key in t if target_property(key)[0] not in self.irreps)
            if unknown:
                raise ValueError(f"StudyData: sample {k} has target(s) {unknown} without irreps")
            orphans = sorted(key for key in t if key not in self.irreps and target_property(key)[0] not in t)
            if orphans:
                raise ValueError(f"StudyData: sample {k} has part target(s) {orphans} without their property")
        self._fingerprint: str | None = None
        self._parts_fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.graphs)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_datamodule(cls, dm: Any) -> "StudyData":
        """Collect the (set up) data module's train/val/test samples.

        Raises ``ValueError`` if the module was built with ``train_fraction < 1`` (the study
        subsamples itself) or lacks one of :data:`PROPERTIES`.
        """
        cfg = dm.config
        if float(cfg.train_fraction) != 1.0:
            raise ValueError(
                f"StudyData needs the full training split (train_fraction=1), got {cfg.train_fraction}"
            )
        missing = sorted(set(PROPERTIES) - set(cfg.properties))
        if missing:
            raise ValueError(f"StudyData needs properties {list(PROPERTIES)}; data config lacks {missing}")
        graphs, targets, keys, sides, uids = [], [], [], [], []
        for side in SIDES:
            ds = getattr(dm, f"{side}_dataset")
            if ds is None:
                raise ValueError("data module is not set up; call setup() first")
            for (graph, tgt), key, rec in zip(ds.samples, ds.material_keys, ds.record_uids):
                graphs.append(graph)
                # the properties and their parts (dielectric_electronic, dielectric_ionic)
                targets.append(
                    {p: torch.as_tensor(v, dtype=torch.float64) for p, v in tgt.items()
                     if target_property(p)[0] in dm.irreps}
                )
                keys.append(str(key))
                sides.append(side)
                uids.append([str(u) for u in rec])
        provenance = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data_hashes": dm.data_hashes(),
            "summary": json.loads(json.dumps(dm.summary(), default=str)),
        }
        return cls(graphs, targets, keys, sides, uids, dict(dm.irreps), cfg.to_dict(), provenance)

    @classmethod
    def build(cls, data_config: Mapping[str, Any]) -> "StudyData":
        """Build from data settings (needs pymatgen); properties are set to :data:`PROPERTIES`
        and ``train_fraction`` to 1."""
        try:
            import pymatgen.core  # noqa: F401
        except ImportError:
            raise ImportError(
                "building the study data needs pymatgen; on this machine use --from-cache FILE "
                "(written by --export-cache on a machine with pymatgen)"
            ) from None
        from irreptensor_ml.data.datamodule import TensorDataModule

        cfg = dict(data_config)
        cfg["properties"] = list(PROPERTIES)
        cfg["train_fraction"] = 1.0
        dm = TensorDataModule(cfg)
        dm.setup("fit")
        return cls.from_datamodule(dm)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one weights-only ``torch.save`` file (atomically); returns its path."""
        props = list(self.irreps) + self.part_keys()
        n = len(self)
        target_tensors, masks = {}, {}
        for p in props:
            t = torch.zeros(n, _dim(self.irreps[target_property(p)[0]]), dtype=torch.float64)
            m = torch.zeros(n, dtype=torch.bool)
            for k, tgt in enumerate(self.targets):
                if p in tgt:
                    t[k] = tgt[p]
                    m[k] = True
            target_tensors[p], masks[p] = t, m
        payload = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "graphs": pack_graphs(self.graphs),
            "graph_ids": [g.material_id for g in self.graphs],
            "targets": target_tensors,
            "masks": masks,
            "material_keys": list(self.material_keys),
            "sides": list(self.sides),
            "record_uids": [list(u) for u in self.record_uids],
            "irreps": dict(self.irreps),
            "data_config": json.loads(json.dumps(self.data_config)),
            "provenance": json.loads(json.dumps(self.provenance, default=str)),
            "fingerprint": self.fingerprint,
        }
        return atomic_torch_save(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "StudyData":
        """Read a file written by :meth:`save` with ``torch.load(weights_only=True)``.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file of another
        format or one whose content does not match its stored fingerprint.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study data cache not found: {path}")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
            raise ValueError(f"{str(path)!r} is not a transfer-study data cache ({CACHE_FORMAT})")
        if int(payload.get("format_version", 0)) > CACHE_FORMAT_VERSION:
            raise ValueError(f"{str(path)!r} has a newer cache format than this code supports")
        graphs = unpack_graphs(payload["graphs"], payload["graph_ids"])
        # the properties first, then their parts (files written before the parts were kept have none)
        keys = list(payload["irreps"]) + [p for p in payload["targets"] if p not in payload["irreps"]]
        targets = [
            {p: payload["targets"][p][k].clone() for p in keys if bool(payload["masks"][p][k])}
            for k in range(len(graphs))
        ]
        data = cls(
            graphs, targets, list(payload["material_keys"]), list(payload["sides"]),
            [list(u) for u in payload["record_uids"]], dict(payload["irreps"]),
            dict(payload["data_config"]), dict(payload.get("provenance") or {}),
        )
        if payload.get("fingerprint") and payload["fingerprint"] != data.fingerprint:
            raise ValueError(f"{str(path)!r} is corrupt: content does not match its fingerprint")
        return data

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the content: data settings, sides, keys, uids, graphs and targets.

        The same data give the same fingerprint on every machine; it is part of every run id. The
        part targets are not hashed here (:attr:`parts_fingerprint`), so data with and without
        them have the same fingerprint.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = {k: v for k, v in self.data_config.items() if k not in _NOT_CONTENT}
            h.update(json.dumps(cfg, sort_keys=True).encode())
            h.update(json.dumps(self.irreps, sort_keys=True).encode())
            for g, t, key, side, uids in zip(
                self.graphs, self.targets, self.material_keys, self.sides, self.record_uids
            ):
                props = sorted(p for p in t if p in self.irreps)
                h.update(json.dumps([key, side, uids, props]).encode())
                for x in (g.species, g.pos, g.lattice, g.edge_index, g.edge_shift, *[t[p] for p in props]):
                    h.update(x.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def parts_fingerprint(self) -> str:
        """SHA-256 (hex) of the part targets (sample index, key, values) with :attr:`fingerprint`;
        ``""`` when the data hold no parts. Part of the run id of every run that trains or
        evaluates a head with parts."""
        if getattr(self, "_parts_fingerprint", None) is None:
            keys = self.part_keys()
            if not keys:
                self._parts_fingerprint = ""
            else:
                h = hashlib.sha256(self.fingerprint.encode())
                for k, t in enumerate(self.targets):
                    present = [p for p in keys if p in t]
                    if present:
                        h.update(json.dumps([k, present]).encode())
                        for p in present:
                            h.update(t[p].contiguous().numpy().tobytes())
                self._parts_fingerprint = h.hexdigest()
        return self._parts_fingerprint

    def part_keys(self) -> list[str]:
        """The part targets present in the data (``["dielectric_electronic", ...]``), in
        :data:`PART_TARGETS` order."""
        present = {p for t in self.targets for p in t if p not in self.irreps}
        return [p for p in PART_TARGETS if p in present]

    # ------------------------------------------------------------------ selection
    def _check_property(self, prop: str) -> None:
        base, part = target_property(prop)
        if base not in self.irreps:
            raise ValueError(f"unknown property {prop!r}; this study data has {sorted(self.irreps)}")
        if part is not None and prop not in self.part_keys():
            raise ValueError(f"this study data has no {part} part of {base!r} (the data files or the cache "
                             "file lack it; caches exported before the parts were kept have none)")

    def indices(self, side: str, prop: str | None = None) -> list[int]:
        """Indices of the samples on ``side`` that have a target for ``prop`` (any, if ``None``);
        ``prop`` may be a part key (``"dielectric_electronic"``)."""
        if side not in SIDES:
            raise ValueError(f"unknown split side {side!r}; expected one of {SIDES}")
        if prop is not None:
            self._check_property(prop)
        return [
            k for k, (s, t) in enumerate(zip(self.sides, self.targets))
            if s == side and (prop is None or prop in t)
        ]

    def train_subset(self, prop: str, fraction: float, seed: int) -> list[int]:
        """Training samples of ``prop`` whose material is in the kept ``fraction`` of its
        training materials (see :func:`subsample_keys`; nested in ``fraction`` for one seed)."""
        idx = self.indices("train", prop)
        kept = subsample_keys([self.material_keys[k] for k in idx], fraction, seed)
        return [k for k in idx if self.material_keys[k] in kept]

    def sample_id(self, index: int, prop: str) -> str:
        """Unique id of a sample for one property: the uid of its ``prop`` record."""
        uids = self.record_uids[index]
        prop = target_property(prop)[0]  # a part is measured on its property's record
        for u in uids:
            if u.split(":", 1)[0].startswith(prop + "_"):
                return u
        return "+".join(uids) or self.graphs[index].material_id

    def dataset(
        self,
        indices: Sequence[int],
        properties: Sequence[str],
        *,
        drop: Mapping[str, set[int]] | None = None,
        id_property: str | None = None,
    ) -> GraphTargetDataset:
        """Samples ``indices`` with targets restricted to ``properties``.

        Args:
            indices: sample indices (e.g. from :meth:`indices`).
            properties: targets kept; samples left without any target are dropped.
            drop: ``{property: set of indices}`` whose target of that property is removed (a
                multitask run's subsampled target).
            id_property: label each graph with :meth:`sample_id` for this property (the
                evaluation keys per-material predictions on it).
        """
        for p in properties:
            self._check_property(p)
        drop = drop or {}
        samples, keys, uids = [], [], []
        for k in indices:
            t = {p: v for p, v in self.targets[k].items() if p in properties and k not in drop.get(p, ())}
            if not t:
                continue
            g = self.graphs[k]
            if id_property is not None:
                g = dataclasses.replace(g, material_id=self.sample_id(k, id_property))
            samples.append((g, t))
            keys.append(self.material_keys[k])
            uids.append(list(self.record_uids[k]))
        return GraphTargetDataset(samples, keys, uids)

    def check_union_split(self) -> None:
        """Raise ``ValueError`` if a material key occurs on two split sides (a leak)."""
        side_of: dict[str, str] = {}
        for key, side in zip(self.material_keys, self.sides):
            if side_of.setdefault(key, side) != side:
                raise ValueError(
                    f"material {key!r} is on both the {side_of[key]!r} and the {side!r} side"
                )

    def counts(self) -> dict[str, dict[str, int]]:
        """``{property: {side: number of samples}}`` (and the same for every part key present)."""
        return {p: {s: len(self.indices(s, p)) for s in SIDES} for p in [*self.irreps, *self.part_keys()]}

    def collate_fn(self, properties: Sequence[str], dtype: torch.dtype = torch.float32) -> Any:
        """A picklable collate function for ``properties`` (part keys allowed) casting floats to
        ``dtype``."""
        dims = {p: _dim(self.irreps[target_property(p)[0]]) for p in properties}
        return functools.partial(_collate_cast, dims=dims, dtype=dtype)


def _dim(irreps: str) -> int:
    from e3nn import o3

    return int(o3.Irreps(irreps).dim)


def _collate_cast(samples: Sequence[Any], dims: Mapping[str, int], dtype: torch.dtype) -> Any:
    """Module-level (picklable) :func:`collate` + float cast."""
    return collate(samples, dims).to(dtype=dtype)
