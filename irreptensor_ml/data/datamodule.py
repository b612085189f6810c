"""Lightning data module: records -> union split -> cached graphs -> irrep targets -> batches.

Pipeline (all slow steps cached on disk, see :mod:`irreptensor_ml.data.cache`):

1. :func:`~irreptensor_ml.data.records.load_records` for each property (validated, bad records
   reported and skipped);
2. :func:`~irreptensor_ml.data.splits.universe_material_keys` +
   :func:`~irreptensor_ml.data.splits.side_of`: one split over the union of the materials of ALL
   files of all properties in the data root (shared ids and StructureMatcher-equal structures are
   one material), whatever subset this run trains on, so sides agree between runs;
3. optional deterministic subsample of the *training* materials (``train_fraction``, nested
   subsets for learning curves);
4. :func:`~irreptensor_ml.data.graphs.build_graphs`: one cache file per property and cutoff;
5. targets ``irreptensor.decompose(tensor, property)`` (irrep basis, physical units);
6. :class:`~irreptensor_ml.data.normalization.IrrepNormalizer` per property fitted on the
   (subsampled) training targets only.

A sample is one crystal structure with the targets of every property measured *on that exact
structure* (records with identical structure content are merged, e.g. the three ABO3 files).
Records of the same material whose structures differ (e.g. a piezoelectric structure rotated
into the IEEE frame) stay separate samples, because each tensor is only valid in its own
structure's Cartesian frame. Batches carry targets in physical irrep units plus masks; the model
side applies the normalizers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import irreptensor as it
import lightning
import numpy as np
import torch
from e3nn import o3
from torch.utils.data import DataLoader, Dataset

from irreptensor_ml.data.batch import Batch, collate
from irreptensor_ml.data.cache import file_sha256, structure_hash
from irreptensor_ml.data.graphs import CrystalGraph, build_graphs
from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.data.records import (
    PARTS,
    LoadReport,
    Record,
    find_files,
    load_records,
    part_key,
    property_rank,
)
from irreptensor_ml.data.splits import SIDES, check_fractions, side_of, subsample_keys, universe_material_keys

if TYPE_CHECKING:  # structures are needed only to build graphs, not to use cached ones
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Validated data settings (the keys accepted in :class:`TensorDataModule`'s config dict).

    Attributes:
        properties: properties to load, subset of dielectric/piezoelectric/elastic.
        sources: ``"mp"``, ``"matten"``, ``"abo3p4mm"`` or ``"all"`` (see ``load_records``).
        cutoff: neighbor cutoff in Angstrom.
        batch_size: crystals per batch.
        split_seed: seed of the hash-based split and of the training subsample.
        split_fractions: expected (train, val, test) fractions.
        train_fraction: fraction of training *materials* kept, in (0, 1] (learning curves).
        cache_dir: cache root; ``None`` = ``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor``.
        num_workers: DataLoader workers.
        data_root: directory of the ``.jsonl.gz`` files; ``None`` = the shipped copies.
        check_symmetry: run the point-group consistency check on load.
        symprec: spglib tolerance (Angstrom) for that check.
        symmetry_tolerance: largest accepted relative symmetry residual.
        limit: keep only the first ``limit`` valid records per property (quick experiments).
        dtype: floating dtype of batches, ``"float32"`` or ``"float64"``.
        progress: show tqdm progress bars.
    """

    properties: tuple[str, ...] = ("elastic",)
    sources: tuple[str, ...] = ("mp",)
    cutoff: float = 5.0
    batch_size: int = 16
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    train_fraction: float = 1.0
    cache_dir: str | None = None
    num_workers: int = 0
    data_root: str | None = None
    check_symmetry: bool = True
    symprec: float = 0.01
    symmetry_tolerance: float = 0.05
    limit: int | None = None
    dtype: str = "float32"
    progress: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "DataConfig":
        """Build from a plain dict; unknown keys or bad values raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown data config key(s) {unknown}; known keys: {sorted(known)}")
        kw = dict(config)
        for key in ("properties", "sources"):
            if key in kw:
                kw[key] = (kw[key],) if isinstance(kw[key], str) else tuple(kw[key])
        if "split_fractions" in kw:
            kw["split_fractions"] = tuple(float(f) for f in kw["split_fractions"])
        for key in ("cache_dir", "data_root"):
            if kw.get(key) is not None:
                kw[key] = str(kw[key])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not self.properties:
            raise ValueError("properties must name at least one property")
        for p in self.properties:
            property_rank(p)  # raises for an unknown property
        if len(set(self.properties)) != len(self.properties):
            raise ValueError(f"properties has duplicates: {list(self.properties)}")
        if not self.cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Angstrom, got {self.cutoff}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_fractions(self.split_fractions)
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be None or >= 1, got {self.limit}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples) for YAML/JSON run records."""
        out = dataclasses.asdict(self)
        for key in ("properties", "sources", "split_fractions"):
            out[key] = list(out[key])
        return out


class GraphTargetDataset(Dataset):
    """List of ``(CrystalGraph, {property: Tensor(dim,) float64})`` samples plus provenance.

    Attributes:
        samples: the samples.
        material_keys: material key of each sample (see :mod:`~irreptensor_ml.data.splits`).
        record_uids: the record uids (``"<file>:<material_id>"``) merged into each sample.
    """

    def __init__(
        self,
        samples: Sequence[tuple[CrystalGraph, dict[str, torch.Tensor]]],
        material_keys: Sequence[str],
        record_uids: Sequence[list[str]],
    ) -> None:
        if not len(samples) == len(material_keys) == len(record_uids):
            raise ValueError("samples, material_keys and record_uids must have equal lengths")
        self.samples = list(samples)
        self.material_keys = list(material_keys)
        self.record_uids = list(record_uids)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[CrystalGraph, dict[str, torch.Tensor]]:
        return self.samples[index]

    def count(self, property: str) -> int:
        """Number of samples that have a target for ``property``."""
        return sum(property in t for _, t in self.samples)

    def targets(self, property: str) -> torch.Tensor:
        """``(n, dim)`` float64 stacked targets of ``property`` (samples lacking it are left out)."""
        rows = [t[property] for _, t in self.samples if property in t]
        if not rows:
            raise ValueError(f"no sample in this dataset has property {property!r}")
        return torch.stack(rows)


def _collate_cast(samples: Sequence, dims: Mapping[str, int], dtype: torch.dtype) -> Batch:
    """Module-level (picklable for worker processes) collate + dtype cast."""
    return collate(samples, dims).to(dtype=dtype)


class TensorDataModule(lightning.LightningDataModule):
    """Data module for one or more tensor properties, built from a config dict (:class:`DataConfig`).

    After :meth:`setup` it exposes ``train_dataset``, ``val_dataset``, ``test_dataset``
    (:class:`GraphTargetDataset`), ``normalizers: {prop: IrrepNormalizer}``,
    ``irreps: {prop: str}``, ``dims: {prop: int}``, ``split: {material_key: side}``,
    ``load_reports: {prop: LoadReport}`` and :meth:`summary`.
    """

    def __init__(self, config: Mapping[str, Any] | DataConfig | None = None) -> None:
        super().__init__()
        self.config = (
            config if isinstance(config, DataConfig) else DataConfig.from_dict(dict(config or {}))
        )
        self.irreps: dict[str, str] = {p: str(it.irreps(p)) for p in self.config.properties}
        self.dims: dict[str, int] = {p: o3.Irreps(s).dim for p, s in self.irreps.items()}
        #: extra targets of the additive parts of a property (``dielectric_electronic``, ...):
        #: in every batch (masked where a record has no parts); a head trained with parts uses them.
        self.part_dims: dict[str, int] = {
            part_key(p, part): self.dims[p] for p in self.irreps for part in PARTS.get(p, ())
        }
        self.normalizers: dict[str, IrrepNormalizer] = {}
        self.split: dict[str, str] = {}
        self.load_reports: dict[str, LoadReport] = {}
        self.train_dataset: GraphTargetDataset | None = None
        self.val_dataset: GraphTargetDataset | None = None
        self.test_dataset: GraphTargetDataset | None = None
        self._predict: tuple[list[Structure], list[str]] | None = None
        self._built = False

    # ------------------------------------------------------------------ building
    def prepare_data(self) -> None:
        """Build everything once (populates the on-disk caches; Lightning runs it on rank 0)."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets and normalizers (cache hits after :meth:`prepare_data`)."""
        self._build()

    def _build(self) -> None:
        if self._built:
            return
        cfg = self.config
        records: dict[str, list[Record]] = {}
        for prop in cfg.properties:
            loaded = load_records(
                prop, cfg.sources, cfg.data_root,
                check_symmetry=cfg.check_symmetry, symprec=cfg.symprec,
                symmetry_tolerance=cfg.symmetry_tolerance, cache_dir=cfg.cache_dir,
            )
            self.load_reports[prop] = loaded.report
            records[prop] = list(loaded)[: cfg.limit] if cfg.limit else list(loaded)
        # Material identity over every file in the data root, so sides agree across runs.
        keys = universe_material_keys(cfg.data_root, cache_dir=cfg.cache_dir, progress=cfg.progress)
        missing = [r.uid for recs in records.values() for r in recs if r.uid not in keys]
        if missing:
            raise ValueError(f"records missing from the material grouping: {missing[:5]}")
        self.split = {
            k: side_of(k, cfg.split_fractions, cfg.split_seed) for k in sorted(set(keys.values()))
        }
        by_side = {
            prop: {side: [r for r in recs if self.split[keys[r.uid]] == side] for side in SIDES}
            for prop, recs in records.items()
        }
        train_keys = {keys[r.uid] for prop in records for r in by_side[prop]["train"]}
        kept_train = subsample_keys(train_keys, cfg.train_fraction, cfg.split_seed)
        for prop in records:
            by_side[prop]["train"] = [r for r in by_side[prop]["train"] if keys[r.uid] in kept_train]

        graphs: dict[str, CrystalGraph] = {}
        targets: dict[str, torch.Tensor] = {}
        for prop, recs in records.items():
            built = build_graphs(
                [r.structure for r in recs], cfg.cutoff, cache_dir=cfg.cache_dir,
                name=f"{prop}-{'+'.join(sorted(cfg.sources))}", progress=cfg.progress,
            )
            if not recs:
                continue
            cart = np.stack([np.asarray(r.tensor, dtype=np.float64) for r in recs])  # (n, 3, ..., 3)
            irr = torch.as_tensor(np.asarray(it.decompose(cart, prop)), dtype=torch.float64)
            for r, g, x in zip(recs, built, irr):
                graphs[r.uid] = g
                targets[r.uid] = x.clone()
            for part in PARTS.get(prop, ()):
                with_part = [r for r in recs if part in r.parts]
                if with_part:
                    cart = np.stack([r.parts[part] for r in with_part])
                    irr = torch.as_tensor(np.asarray(it.decompose(cart, prop)), dtype=torch.float64)
                    for r, x in zip(with_part, irr):
                        targets[f"{r.uid}#{part}"] = x.clone()

        datasets = {}
        for side in SIDES:
            side_records = [r for prop in records for r in by_side[prop][side]]
            datasets[side] = self._make_dataset(side_records, keys, graphs, targets)
        self.train_dataset, self.val_dataset, self.test_dataset = (
            datasets["train"], datasets["val"], datasets["test"],
        )
        for prop in cfg.properties:
            if self.train_dataset.count(prop) == 0:
                raise ValueError(
                    f"property {prop!r} has no training samples (limit={cfg.limit}, "
                    f"train_fraction={cfg.train_fraction}); cannot fit its normalizer"
                )
            self.normalizers[prop] = IrrepNormalizer().fit(
                self.train_dataset.targets(prop), self.irreps[prop]
            )
        self._built = True
        logger.info("data summary: %s", self.summary())

    @staticmethod
    def _make_dataset(
        side_records: list[Record],
        keys: Mapping[str, str],
        graphs: Mapping[str, CrystalGraph],
        targets: Mapping[str, torch.Tensor],
    ) -> GraphTargetDataset:
        """Merge records of the same material with identical structure content into one sample."""
        groups: dict[tuple[str, str], list[list[Record]]] = defaultdict(list)
        for r in side_records:
            slots = groups[(keys[r.uid], structure_hash(r.structure))]
            for slot in slots:  # first sample of this structure still lacking this property
                if all(o.property != r.property for o in slot):
                    slot.append(r)
                    break
            else:
                slots.append([r])
        samples, mkeys, uids = [], [], []
        for (mkey, _), slots in sorted(groups.items()):
            for slot in slots:
                graph = dataclasses.replace(
                    graphs[slot[0].uid],
                    material_id="+".join(sorted({r.material_id for r in slot})),
                )
                sample_targets = {r.property: targets[r.uid] for r in slot}
                for r in slot:
                    for part in PARTS.get(r.property, ()):
                        if f"{r.uid}#{part}" in targets:
                            sample_targets[part_key(r.property, part)] = targets[f"{r.uid}#{part}"]
                samples.append((graph, sample_targets))
                mkeys.append(mkey)
                uids.append([r.uid for r in slot])
        return GraphTargetDataset(samples, mkeys, uids)

    def training_targets(self) -> dict[str, torch.Tensor]:
        """``{key: (n, dim)}`` physical training targets of every property, and of every part
        that all of the property's training samples have (``"dielectric_electronic"``, ...), rows
        in the same order: what fits the output maps of a model."""
        self._require_built()
        out: dict[str, torch.Tensor] = {}
        for prop in self.irreps:
            out[prop] = self.train_dataset.targets(prop)
            for key in (k for k in self.part_dims if k.startswith(f"{prop}_")):
                if self.train_dataset.count(key) == self.train_dataset.count(prop):
                    out[key] = self.train_dataset.targets(key)
        return out

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=int(self.config.batch_size),
            shuffle=shuffle,
            num_workers=self.config.num_workers,
            collate_fn=functools.partial(
                _collate_cast, dims={**self.dims, **self.part_dims}, dtype=_DTYPES[self.config.dtype]
            ),
            persistent_workers=self.config.num_workers > 0,
        )

    def _require_built(self) -> None:
        if not self._built:
            raise ValueError("TensorDataModule is not set up; call prepare_data()/setup() first")

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the (subsampled) training split."""
        self._require_built()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in fixed order."""
        self._require_built()
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in fixed order."""
        self._require_built()
        return self._loader(self.test_dataset, shuffle=False)

    def set_predict_structures(
        self, structures: Sequence[Structure], material_ids: Sequence[str] | None = None
    ) -> None:
        """Register structures for :meth:`predict_dataloader` (ids default to ``"0"``, ``"1"``, …)."""
        if material_ids is not None and len(material_ids) != len(structures):
            raise ValueError(
                f"{len(material_ids)} material_ids for {len(structures)} structures"
            )
        ids = [str(i) for i in range(len(structures))] if material_ids is None else list(material_ids)
        self._predict = (list(structures), ids)

    def predict_dataloader(
        self, structures: Sequence[Structure] | None = None, material_ids: Sequence[str] | None = None
    ) -> DataLoader:
        """Batches (no targets, all masks False) for arbitrary structures, in input order.

        ``structures`` (or those registered with :meth:`set_predict_structures`) are turned into
        graphs with this module's cutoff, without the disk cache. With neither, the test split is
        returned (with its targets). Does not require :meth:`setup` for arbitrary structures.
        """
        if structures is not None:
            self.set_predict_structures(structures, material_ids)
        if self._predict is None:
            self._require_built()
            return self._loader(self.test_dataset, shuffle=False)
        structs, ids = self._predict
        graphs = build_graphs(
            structs, self.config.cutoff, use_cache=False, name="predict",
            progress=self.config.progress and len(structs) > 50,
        )
        samples = [(dataclasses.replace(g, material_id=i), {}) for g, i in zip(graphs, ids)]
        dataset = GraphTargetDataset(samples, list(ids), [[] for _ in ids])
        return self._loader(dataset, shuffle=False)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Sizes and provenance: samples per side and property, materials per side, skips, file hashes."""
        self._require_built()
        sides = {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}
        return {
            "config": self.config.to_dict(),
            "irreps": dict(self.irreps),
            "num_samples": {
                prop: {side: ds.count(prop) for side, ds in sides.items()}
                for prop in self.config.properties
            },
            "num_materials": {side: len(set(ds.material_keys)) for side, ds in sides.items()},
            "skipped": {p: rep.counts_by_reason() for p, rep in self.load_reports.items()},
            "files": {p: list(rep.files) for p, rep in self.load_reports.items()},
        }

    def data_hashes(self) -> dict[str, str]:
        """SHA-256 of every data file used (``{file name: hex digest}``), for run provenance."""
        out = {}
        for prop in self.config.properties:
            for path in find_files(prop, self.config.sources, self.config.data_root):
                out[path.name] = file_sha256(path)
        return out

    def normalizer_state(self) -> dict[str, dict[str, Any]]:
        """``{prop: IrrepNormalizer.state_dict()}`` (plain tensors/str) to store with a model."""
        self._require_built()
        return {p: n.state_dict() for p, n in self.normalizers.items()}


__all__ = ["DataConfig", "GraphTargetDataset", "TensorDataModule"]
