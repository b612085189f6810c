"""Tests for irreptensor_ml.data.datamodule on a tiny subset of the shipped files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import irreptensor as it
from irreptensor_ml.data.batch import Batch
from irreptensor_ml.data.datamodule import DataConfig, TensorDataModule
from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.data.records import datasets_root

PROPS = ["elastic", "dielectric", "piezoelectric"]
SHARED = ["mp-11869", "mp-2691", "mp-1105"]  # ids in elastic_mp2015 and dielectric_mp2017
SELECTION = {
    "elastic_mp2015": (10, SHARED + ["mp-567276"]),
    "elastic_matten": (2, ["matten-n100-22"]),  # StructureMatcher-equal to elastic mp-567276
    "dielectric_mp2017": (10, SHARED + ["mp-3163"]),
    "piezoelectric_mp2015": (8, ["mp-11869", "mp-2691", "mp-5986"]),
    "elastic_abo3p4mm": (0, ["abo3p4mm-BaSnO3-5", "abo3p4mm-AgNbO3-1"]),
    "dielectric_abo3p4mm": (0, ["abo3p4mm-BaSnO3-5", "abo3p4mm-AgNbO3-1"]),
    "piezoelectric_abo3p4mm": (0, ["abo3p4mm-BaSnO3-5", "abo3p4mm-AgNbO3-1"]),
}


def _write_subset(root: Path, scale_ids: dict[str, float] | None = None) -> Path:
    """Copy the selected lines of the real files into ``root`` (tensors optionally scaled)."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, (first, extra) in SELECTION.items():
        lines = []
        with gzip.open(datasets_root() / f"{stem}.jsonl.gz", "rt") as fh:
            for k, text in enumerate(fh):
                rec = json.loads(text)
                if k < first or rec["material_id"] in extra:
                    factor = (scale_ids or {}).get(rec["material_id"])
                    if factor is not None:
                        for key in ("tensor", "tensor_electronic", "tensor_ionic"):  # parts add up
                            if key in rec:
                                rec[key] = (np.array(rec[key]) * factor).tolist()
                    lines.append(json.dumps(rec))
        with gzip.open(root / f"{stem}.jsonl.gz", "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return root


def _config(root: Path, cache: Path, **over) -> dict:
    cfg = {"properties": PROPS, "sources": ["all"], "cutoff": 4.0, "batch_size": 4,
           "split_seed": 3, "split_fractions": [0.6, 0.2, 0.2], "cache_dir": str(cache),
           "data_root": str(root), "progress": False}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("dm")
    return _write_subset(base / "data"), base / "cache"


@pytest.fixture(scope="module")
def dm(data_dirs) -> TensorDataModule:
    root, cache = data_dirs
    module = TensorDataModule(_config(root, cache))
    module.prepare_data()
    module.setup("fit")
    return module


def _sides(dm: TensorDataModule) -> dict[str, object]:
    return {"train": dm.train_dataset, "val": dm.val_dataset, "test": dm.test_dataset}


def test_setup_sizes_and_irreps(dm: TensorDataModule) -> None:
    assert dm.irreps == {p: it.irreps(p) for p in PROPS}
    assert dm.dims == {"elastic": 21, "dielectric": 6, "piezoelectric": 18}
    summary = dm.summary()
    counts = summary["num_samples"]
    assert all(counts[p]["train"] > 0 for p in PROPS)
    assert all(dm.load_reports[p].n_skipped == 0 for p in PROPS)
    for p in PROPS:
        assert sum(counts[p].values()) == dm.load_reports[p].n_loaded


def test_union_split_no_material_on_two_sides(dm: TensorDataModule) -> None:
    keys_by_side = {s: set(ds.material_keys) for s, ds in _sides(dm).items()}
    assert not keys_by_side["train"] & keys_by_side["test"]
    assert not keys_by_side["train"] & keys_by_side["val"]
    assert not keys_by_side["val"] & keys_by_side["test"]
    # shared ids, the StructureMatcher pair and the ABO3 triple are one material each
    where = {}
    for side, ds in _sides(dm).items():
        for key, uids in zip(ds.material_keys, ds.record_uids):
            for uid in uids:
                where[uid] = (side, key)
    for mid in SHARED:
        assert where[f"elastic_mp2015.jsonl.gz:{mid}"] == where[f"dielectric_mp2017.jsonl.gz:{mid}"]
    assert where["elastic_mp2015.jsonl.gz:mp-567276"] == where["elastic_matten.jsonl.gz:matten-n100-22"]
    # the hypothetical P4mm BaSnO3 matches MP's BaSnO3 structure
    assert where["elastic_abo3p4mm.jsonl.gz:abo3p4mm-BaSnO3-5"] == where["dielectric_mp2017.jsonl.gz:mp-3163"]


def test_identical_structures_merge_into_one_sample(dm: TensorDataModule) -> None:
    found = 0
    for ds in _sides(dm).values():
        for (graph, targets), uids in zip(ds.samples, ds.record_uids):
            if "abo3p4mm-AgNbO3-1" in graph.material_id:
                found += 1
                assert set(PROPS) <= set(targets) and len(uids) == 3
            if graph.material_id == "mp-11869":  # different structures per file: separate samples
                assert len(set(targets) & set(PROPS)) == 1
    assert found == 1


def test_targets_are_irreps_of_the_record_tensors(dm: TensorDataModule, data_dirs) -> None:
    root, _ = data_dirs
    tensors = {}
    for stem in SELECTION:
        with gzip.open(root / f"{stem}.jsonl.gz", "rt") as fh:
            for text in fh:
                rec = json.loads(text)
                tensors[f"{stem}.jsonl.gz:{rec['material_id']}"] = np.array(rec["tensor"])
    checked = 0
    for ds in _sides(dm).values():
        for (_, targets), uids in zip(ds.samples, ds.record_uids):
            for uid in uids:
                prop = uid.split("_")[0]
                expected = it.decompose(tensors[uid][None], prop)[0]
                assert torch.allclose(targets[prop], torch.from_numpy(expected), rtol=1e-12, atol=1e-9)
                checked += 1
    assert checked == sum(dm.load_reports[p].n_loaded for p in PROPS)


def test_normalizers_fit_on_training_split_only(dm: TensorDataModule, data_dirs, tmp_path) -> None:
    for p in PROPS:
        ref = IrrepNormalizer().fit(dm.train_dataset.targets(p), dm.irreps[p])
        assert torch.equal(ref.scale, dm.normalizers[p].scale)
        assert torch.equal(ref.shift, dm.normalizers[p].shift)
    # blow up every val/test tensor by 5 (more would pass the physical bounds of
    # records.TENSOR_MAGNITUDE_BOUNDS and skip the record): the normalizers must not change
    held_out = {mid for ds in (dm.val_dataset, dm.test_dataset)
                for uids in ds.record_uids for mid in (u.split(":")[1] for u in uids)}
    train_ids = {u.split(":")[1] for uids in dm.train_dataset.record_uids for u in uids}
    assert held_out and not held_out & train_ids
    root2 = _write_subset(tmp_path / "data", scale_ids={m: 5.0 for m in held_out})
    dm2 = TensorDataModule(_config(root2, tmp_path / "cache"))
    dm2.setup()
    assert dm2.split == dm.split
    for p in PROPS:
        assert torch.allclose(dm2.normalizers[p].scale, dm.normalizers[p].scale, rtol=1e-12)
        assert torch.allclose(dm2.normalizers[p].shift, dm.normalizers[p].shift, rtol=1e-12)
    state = dm.normalizer_state()
    assert set(state) == set(PROPS) and isinstance(state["elastic"]["irreps"], str)


def test_dataloaders_yield_masked_batches(dm: TensorDataModule) -> None:
    batches = list(dm.train_dataloader())
    assert sum(b.num_graphs for b in batches) == len(dm.train_dataset)
    b = batches[0]
    assert isinstance(b, Batch)
    parts = {"dielectric_electronic", "dielectric_ionic"} if "dielectric" in PROPS else set()
    assert set(b.targets) == set(PROPS) | parts and b.pos.dtype == torch.float32
    assert b.edge_shift.dtype == torch.float32 and b.species.dtype == torch.long
    for p in PROPS:
        assert b.targets[p].shape == (b.num_graphs, dm.dims[p])
        assert bool((b.targets[p][~b.masks[p]] == 0).all())
    n_masked = sum(int(bb.masks[p].sum()) for bb in dm.val_dataloader() for p in PROPS)
    assert n_masked == sum(dm.val_dataset.count(p) for p in PROPS)
    assert float(b.edge_vectors().norm(dim=1).max()) <= 4.0 + 1e-5


def test_sides_do_not_depend_on_the_loaded_properties(dm: TensorDataModule, data_dirs) -> None:
    root, cache = data_dirs
    single = TensorDataModule(_config(root, cache, properties=["elastic"], sources=["mp"]))
    single.setup()
    assert single.split == dm.split

    def side_by_uid(module):
        return {u: side for side, ds in _sides(module).items() for uids in ds.record_uids for u in uids}

    full, only = side_by_uid(dm), side_by_uid(single)
    assert only and all(full[u] == side for u, side in only.items())


def test_train_fraction_subsamples_training_materials_only(dm: TensorDataModule, data_dirs) -> None:
    root, cache = data_dirs
    half = TensorDataModule(_config(root, cache, train_fraction=0.5))
    half.setup()
    full_train = set(dm.train_dataset.material_keys)
    half_train = set(half.train_dataset.material_keys)
    assert half_train < full_train
    assert len(half_train) == round(0.5 * len(full_train))
    assert half.val_dataset.material_keys == dm.val_dataset.material_keys
    assert half.test_dataset.material_keys == dm.test_dataset.material_keys


def test_predict_dataloader_for_arbitrary_structures(dm: TensorDataModule) -> None:
    from pymatgen.core import Lattice, Structure

    structures = [Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]),
                  Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])]
    fresh = TensorDataModule({"properties": ["elastic"], "cutoff": 4.0, "progress": False})
    batches = list(fresh.predict_dataloader(structures, material_ids=["a", "b"]))
    assert len(batches) == 1 and batches[0].material_ids == ["a", "b"]
    assert not bool(batches[0].masks["elastic"].any())
    assert sum(b.num_graphs for b in dm.predict_dataloader()) == len(dm.test_dataset)


def test_config_errors(data_dirs) -> None:
    with pytest.raises(ValueError, match="unknown data config key"):
        TensorDataModule({"properties": ["elastic"], "batchsize": 3})
    with pytest.raises(ValueError, match="unknown property"):
        TensorDataModule({"properties": ["elasticity"]})
    with pytest.raises(ValueError, match="train_fraction"):
        DataConfig.from_dict({"train_fraction": 0.0})
    with pytest.raises(ValueError, match="fractions"):
        DataConfig.from_dict({"split_fractions": [0.9, 0.2, 0.1]})
    with pytest.raises(ValueError, match="not set up"):
        TensorDataModule({"properties": ["elastic"]}).train_dataloader()
    assert DataConfig.from_dict({"properties": "dielectric"}).properties == ("dielectric",)
    assert DataConfig.from_dict({}).to_dict()["properties"] == ["elastic"]


def test_dielectric_parts_are_targets_that_sum_to_the_total(dm: TensorDataModule) -> None:
    """The files' electronic and ionic tensors travel with the total (irreps, physical units)."""
    if "dielectric" not in PROPS:
        pytest.skip("no dielectric data in this selection")
    targets = dm.training_targets()
    el, ion = targets["dielectric_electronic"], targets["dielectric_ionic"]
    assert el.shape == ion.shape == targets["dielectric"].shape
    assert torch.allclose(el + ion, targets["dielectric"], atol=1e-10)
    for b in dm.val_dataloader():
        assert torch.equal(b.masks["dielectric_electronic"], b.masks["dielectric"])
