"""Issue 15: records that would make a NaN model (overlapping atoms, huge tensors) are skipped by id,
and a record whose symmetry check raises is skipped instead of aborting the load."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data import records as records_mod
from irreptensor_ml.data.records import load_records


def _nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _write(path: Path, rows: list[tuple[str, Structure, np.ndarray]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for mid, s, t in rows:
            fh.write(json.dumps({"material_id": mid, "structure": s.as_dict(), "tensor": t.tolist()}) + "\n")
    return path


def test_closest_site_pair_sees_periodic_images() -> None:
    closest_site_pair = records_mod.closest_site_pair
    assert closest_site_pair(_nacl()) is None
    over = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0]])
    assert closest_site_pair(over) == (0.0, 0, 1)
    tiny_cell = Structure(Lattice.cubic(0.4), ["H"], [[0, 0, 0]])  # one atom, its images 0.4 A away
    d, i, j = closest_site_pair(tiny_cell)
    assert d == pytest.approx(0.4) and i == j == 0
    across = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.01, 0, 0], [0.99, 0, 0]])  # 0.08 A through the face
    assert closest_site_pair(across)[0] == pytest.approx(0.08)


@pytest.mark.parametrize("check_symmetry", [False, True])
def test_overlapping_and_huge_records_are_skipped_by_id(tmp_path: Path, check_symmetry: bool) -> None:
    eps = np.eye(3) * 2.5
    elastic_like = np.eye(3) * 1.5
    rows = [
        ("good-1", _nacl(), eps),
        ("overlap-1", Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0]]), eps),
        ("near-1", Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]]), eps),
        ("image-1", Structure(Lattice.cubic(0.45), ["H"], [[0, 0, 0]]), eps),
        ("huge-1", _nacl(), eps * 1e300),
        ("big-1", _nacl(), eps * 1e5),  # 2.5e5 > the dielectric bound 1e5
        ("good-2", _nacl(), elastic_like),
    ]
    path = _write(tmp_path / "dielectric_mp2099.jsonl.gz", rows)
    recs = load_records("dielectric", "mp", root=path.parent, check_symmetry=check_symmetry,
                        cache_dir=tmp_path / "c")
    assert [r.material_id for r in recs] == ["good-1", "good-2"]
    skipped = {s.material_id: s for s in recs.report.skipped}
    assert {k: s.reason for k, s in skipped.items()} == {
        "overlap-1": "structure_overlap", "near-1": "structure_overlap", "image-1": "structure_overlap",
        "huge-1": "tensor_magnitude", "big-1": "tensor_magnitude",
    }
    assert "sites 0 (Na) and 1 (Na) are 0 A apart" in skipped["overlap-1"].detail
    assert "own periodic image" in skipped["image-1"].detail
    assert "1e+05" in skipped["big-1"].detail and skipped["huge-1"].line == 5
    assert "overlap-1 (structure_overlap)" in recs.report.summary()


def test_bounds_admit_the_shipped_data() -> None:
    """The bounds refuse only garbage: every shipped record lies well inside them."""
    assert records_mod.MIN_SITE_DISTANCE == 0.5
    for prop, bound in records_mod.TENSOR_MAGNITUDE_BOUNDS.items():
        recs = load_records(prop, "all", check_symmetry=False)
        assert recs.report.counts_by_reason().get("tensor_magnitude", 0) == 0
        assert recs.report.counts_by_reason().get("structure_overlap", 0) == 0
        assert max(float(np.abs(r.tensor).max()) for r in recs) < bound / 4


def test_huge_dielectric_part_is_refused(tmp_path: Path) -> None:
    el = np.eye(3) * 2.0
    line = {"material_id": "part-1", "structure": _nacl().as_dict(), "tensor": (el * 1e6 - el * 1e6 + el * 3).tolist(),
            "tensor_electronic": (el * 1e6).tolist(), "tensor_ionic": (el * 3 - el * 1e6).tolist()}
    path = tmp_path / "dielectric_mp2099.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    recs = load_records("dielectric", "mp", root=tmp_path, check_symmetry=False)
    assert not recs and recs.report.skipped[0].reason == "parts"
    assert "physical bound" in recs.report.skipped[0].detail


def test_symmetry_check_error_skips_one_record(tmp_path: Path, monkeypatch) -> None:
    """spglib raising for one record skips it (reason symmetry, the exception named), the rest loads."""
    path = _write(tmp_path / "dielectric_mp2099.jsonl.gz",
                  [("good-1", _nacl(), np.eye(3) * 2.0), ("boom-1", _nacl(), np.eye(3) * 3.0),
                   ("good-2", _nacl(), np.eye(3) * 4.0)])
    real = records_mod.structure_symmetry_residual

    def flaky(structure, tensor, property, symprec=0.01):
        if tensor[0, 0] == 3.0:
            from pymatgen.symmetry.analyzer import SymmetryUndeterminedError

            raise SymmetryUndeterminedError("Unable to determine symmetry")
        return real(structure, tensor, property, symprec)

    monkeypatch.setattr(records_mod, "structure_symmetry_residual", flaky)
    recs = load_records("dielectric", "mp", root=path.parent, cache_dir=tmp_path / "c")
    assert [r.material_id for r in recs] == ["good-1", "good-2"]
    (skip,) = recs.report.skipped
    assert (skip.material_id, skip.reason, skip.line) == ("boom-1", "symmetry", 2)
    assert "SymmetryUndeterminedError: Unable to determine symmetry" in skip.detail
    # the failure is not cached: once the check works, the record loads
    monkeypatch.setattr(records_mod, "structure_symmetry_residual", real)
    again = load_records("dielectric", "mp", root=path.parent, cache_dir=tmp_path / "c")
    assert [r.material_id for r in again] == ["good-1", "boom-1", "good-2"]
