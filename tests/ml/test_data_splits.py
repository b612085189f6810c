"""Tests for irreptensor_ml.data.splits: determinism, union over properties, StructureMatcher groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from irreptensor_ml.data.records import Record
from irreptensor_ml.data.splits import material_keys, side_of, subsample_keys


def _rec(mid: str, prop: str, source_file: str, structure: Structure) -> Record:
    rank = {"dielectric": 2, "piezoelectric": 3, "elastic": 4}[prop]
    return Record(mid, prop, source_file, structure, np.zeros((3,) * rank), {})


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def _cscl_type_nacl() -> Structure:  # a different polymorph of the same formula
    return Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _batio3() -> Structure:
    return Structure(Lattice.tetragonal(3.9, 4.2), ["Ba", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0.0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _rotated_scaled_perturbed(s: Structure) -> Structure:
    """Same material as ``s``: rigidly rotated, 2 % larger volume, atoms moved by 0.01 A."""
    out = s.copy()
    out.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    out.scale_lattice(out.volume * 1.02)
    out.translate_sites([0], [0.01, -0.005, 0.0], frac_coords=False)
    return out


@pytest.fixture
def records_by_property() -> dict[str, list[Record]]:
    nacl, bto = _rocksalt(), _batio3()
    elastic = [
        _rec("mp-22862", "elastic", "elastic_mp2015.jsonl.gz", nacl),
        _rec("mp-5986", "elastic", "elastic_mp2015.jsonl.gz", bto),
        _rec("matten-n100-7", "elastic", "elastic_matten.jsonl.gz", _rotated_scaled_perturbed(nacl)),
        _rec("mp-1", "elastic", "elastic_mp2015.jsonl.gz", _cscl_type_nacl()),
    ]
    dielectric = [
        # same id as the elastic record, structure differs (another calculation, rotated frame)
        _rec("mp-5986", "dielectric", "dielectric_mp2017.jsonl.gz", _rotated_scaled_perturbed(bto)),
        _rec("mp-2", "dielectric", "dielectric_mp2017.jsonl.gz",
             Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
    ]
    piezo = [_rec("abo3p4mm-BaTiO3-1", "piezoelectric", "piezoelectric_abo3p4mm.jsonl.gz", bto.copy())]
    return {"elastic": elastic, "dielectric": dielectric, "piezoelectric": piezo}


def test_material_keys_group_shared_ids_and_matching_structures(records_by_property, tmp_path: Path) -> None:
    keys = material_keys(records_by_property, cache_dir=tmp_path, progress=False)
    assert keys["elastic_mp2015.jsonl.gz:mp-22862"] == keys["elastic_matten.jsonl.gz:matten-n100-7"]
    assert keys["elastic_mp2015.jsonl.gz:mp-22862"] == "matten-n100-7"  # smallest id of the group
    # shared id across files and identical BaTiO3 structure in the ABO3 file: one material
    bto = {keys["elastic_mp2015.jsonl.gz:mp-5986"], keys["dielectric_mp2017.jsonl.gz:mp-5986"],
           keys["piezoelectric_abo3p4mm.jsonl.gz:abo3p4mm-BaTiO3-1"]}
    assert bto == {"abo3p4mm-BaTiO3-1"}
    # a different polymorph of NaCl is a different material
    assert keys["elastic_mp2015.jsonl.gz:mp-1"] == "mp-1"
    assert len(set(keys.values())) == 4


def test_material_keys_are_order_and_cache_independent(records_by_property, tmp_path: Path) -> None:
    """The keys (hence the sides, a function of seed and key) ignore record order and the cache."""
    a = material_keys(records_by_property, cache_dir=tmp_path, progress=False)
    reversed_input = {p: list(reversed(r)) for p, r in reversed(list(records_by_property.items()))}
    b = material_keys(reversed_input, cache_dir=tmp_path / "other", progress=False)
    c = material_keys(records_by_property, use_cache=False, progress=False)
    assert a == b == c
    assert {side_of(k, seed=5) for k in a.values()} <= {"train", "val", "test"}


def test_seed_changes_assignment_and_fractions_hold() -> None:
    keys = [f"mp-{i}" for i in range(4000)]
    sides0 = [side_of(k, (0.8, 0.1, 0.1), seed=0) for k in keys]
    sides1 = [side_of(k, (0.8, 0.1, 0.1), seed=1) for k in keys]
    assert sides0 != sides1
    n = len(keys)
    for side, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        count = sides0.count(side)
        assert abs(count - frac * n) < 5 * math.sqrt(n * frac * (1 - frac)), (side, count)
    assert {side_of(k, (1.0, 0.0, 0.0)) for k in keys[:100]} == {"train"}


def test_bad_fractions_raise(records_by_property) -> None:
    with pytest.raises(ValueError, match="fractions"):
        side_of("mp-1", (0.8, 0.1))
    with pytest.raises(ValueError, match="fractions"):
        side_of("mp-1", (0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="listed under"):
        material_keys({"dielectric": records_by_property["elastic"]}, use_cache=False)


def test_grouping_is_cached(records_by_property, tmp_path: Path, monkeypatch) -> None:
    first = material_keys(records_by_property, cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "groups").glob("*.json"))) == 1

    class Exploding:
        def group_structures(self, *args, **kwargs):
            raise AssertionError("StructureMatcher ran despite the cache")

    monkeypatch.setattr("pymatgen.analysis.structure_matcher.StructureMatcher", Exploding)
    assert material_keys(records_by_property, cache_dir=tmp_path, progress=False) == first
    with pytest.raises(AssertionError, match="despite the cache"):  # different content -> miss
        changed = dict(records_by_property, elastic=records_by_property["elastic"][:3])
        material_keys(changed, cache_dir=tmp_path, progress=False)


def test_subsample_keys_nested_and_deterministic() -> None:
    keys = [f"mp-{i}" for i in range(200)]
    small = subsample_keys(keys, 0.1, seed=0)
    large = subsample_keys(reversed(keys), 0.5, seed=0)
    assert len(small) == 20 and len(large) == 100 and small < large
    assert subsample_keys(keys, 1.0) == set(keys)
    assert subsample_keys(keys, 0.1, seed=1) != small
    with pytest.raises(ValueError, match="train_fraction"):
        subsample_keys(keys, 0.0)
