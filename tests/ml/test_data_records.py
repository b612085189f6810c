"""Tests for irreptensor_ml.data.records: validation, bad-record reporting, symmetry cache, real file."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data import records as records_mod
from irreptensor_ml.data.records import find_files, load_records, structure_symmetry_residual


def _rocksalt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def _tetragonal() -> Structure:
    return Structure(Lattice.tetragonal(3.9, 4.2), ["Ba", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0.0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _line(mid: str, structure, tensor) -> str:
    s = structure.as_dict() if isinstance(structure, Structure) else structure
    t = tensor.tolist() if isinstance(tensor, np.ndarray) else tensor
    return json.dumps({"material_id": mid, "formula": "X", "structure": s, "tensor": t,
                       "source": "test", "meta": {}})


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    nacl = _rocksalt()
    good = np.eye(3) * 2.5
    nan = good.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    asym = good.copy()
    asym[0, 1] = 0.3
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    lines = [
        _line("good-1", nacl, good),
        _line("nan-1", nacl, nan),
        _line("shape-1", nacl, np.zeros((3, 3, 3))),
        _line("asym-1", nacl, asym),
        _line("badstruct-1", {"lattice": "nonsense", "sites": []}, good),
        _line("disordered-1", disordered, good),
        _line("sym-1", nacl, np.diag([1.0, 2.0, 3.0])),  # not cubic-invariant
        "{not json",
        _line("good-1", nacl, good),  # duplicate id
        json.dumps({"material_id": "nokey-1", "structure": nacl.as_dict()}),
        _line("unparse-1", nacl, [["a", "b", "c"]] * 3),
        _line("good-2", _tetragonal(), np.diag([5.0, 5.0, 7.0])),
    ]
    return _write(tmp_path / "dielectric_mp2099.jsonl.gz", lines)


def test_bad_records_reported_by_id_and_skipped(bad_file: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="irreptensor_ml.data.records"):
        recs = load_records("dielectric", "mp", root=bad_file.parent, cache_dir=tmp_path / "c")
    assert [r.material_id for r in recs] == ["good-1", "good-2"]
    report = recs.report
    assert report.n_read == 12 and report.n_loaded == 2 and report.n_skipped == 10
    reasons = {(s.material_id, s.reason) for s in report.skipped}
    assert reasons == {
        ("nan-1", "nonfinite"),
        ("shape-1", "shape"),
        ("asym-1", "index_asymmetric"),
        ("badstruct-1", "structure_parse"),
        ("disordered-1", "structure_disordered"),
        ("sym-1", "symmetry"),
        ("line 8", "json"),
        ("good-1", "duplicate_id"),
        ("nokey-1", "json"),
        ("unparse-1", "tensor_unparseable"),
    }
    assert report.counts_by_reason()["json"] == 2
    assert {s.material_id: s.line for s in report.skipped}["sym-1"] == 7
    assert "sym-1" in caplog.text and "skipped 10" in caplog.text
    good = recs[0]
    assert good.tensor.dtype == np.float64 and good.tensor.shape == (3, 3)
    assert good.uid == "dielectric_mp2099.jsonl.gz:good-1"
    assert good.meta["sym_residual_check"] == pytest.approx(0.0, abs=1e-12)


def test_symmetry_check_can_be_skipped(bad_file: Path, tmp_path: Path) -> None:
    recs = load_records("dielectric", "mp", root=bad_file.parent, check_symmetry=False,
                        cache_dir=tmp_path / "c")
    assert {r.material_id for r in recs} == {"good-1", "sym-1", "good-2"}
    assert "sym_residual_check" not in recs[0].meta


def test_symmetry_residuals_are_cached(bad_file: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "c"
    first = load_records("dielectric", "mp", root=bad_file.parent, cache_dir=cache)
    assert len(list((cache / "symmetry").glob("*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("structure_symmetry_residual recomputed despite the cache")

    monkeypatch.setattr(records_mod, "structure_symmetry_residual", fail)
    second = load_records("dielectric", "mp", root=bad_file.parent, cache_dir=cache)
    assert [r.material_id for r in second] == [r.material_id for r in first]
    assert second.report.counts_by_reason() == first.report.counts_by_reason()
    # the tolerance is applied after the cache, so changing it re-uses the cached residuals
    lenient = load_records("dielectric", "mp", root=bad_file.parent, cache_dir=cache,
                           symmetry_tolerance=1.0)
    assert "sym-1" in {r.material_id for r in lenient}
    # symprec changes the point group, so it is part of the cache key (a check that raises skips
    # its record, naming the exception)
    other = load_records("dielectric", "mp", root=bad_file.parent, cache_dir=cache, symprec=0.1)
    assert not other and {s.reason for s in other.report.skipped if s.material_id == "good-2"} == {"symmetry"}
    assert any("AssertionError: structure_symmetry_residual recomputed" in s.detail for s in other.report.skipped)


def test_symmetry_residual_values() -> None:
    st = _tetragonal()
    assert structure_symmetry_residual(st, np.diag([5.0, 5.0, 7.0]), "dielectric") < 1e-12
    bad = np.diag([5.0, 6.0, 7.0])  # breaks the 4-fold axis: residual ||g.T - T|| / ||T||
    expected = np.linalg.norm(np.diag([1.0, -1.0, 0.0])) / np.linalg.norm(bad)
    assert structure_symmetry_residual(st, bad, "dielectric") == pytest.approx(expected, rel=1e-9)
    assert structure_symmetry_residual(st, np.zeros((3, 3)), "dielectric") == 0.0


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown property 'elastc'"):
        load_records("elastc")
    with pytest.raises(ValueError, match="unknown source"):
        load_records("elastic", sources=("materials-project",))
    with pytest.raises(ValueError, match="no data file"):
        load_records("elastic", root=tmp_path)


def test_find_files_sources() -> None:
    names = lambda p, s: [f.name for f in find_files(p, s)]  # noqa: E731
    assert names("elastic", "mp") == ["elastic_mp2015.jsonl.gz"]
    assert names("elastic", ("mp", "matten")) == ["elastic_matten.jsonl.gz", "elastic_mp2015.jsonl.gz"]
    assert names("dielectric", "all") == ["dielectric_abo3p4mm.jsonl.gz", "dielectric_mp2017.jsonl.gz"]
    assert names("dielectric", ("mp", "matten")) == ["dielectric_mp2017.jsonl.gz"]


def test_real_elastic_file_loads(tmp_path: Path) -> None:
    recs = load_records("elastic", "mp", check_symmetry=False, cache_dir=tmp_path)
    assert len(recs) == 1018 and recs.report.n_skipped == 0
    assert all(r.tensor.shape == (3, 3, 3, 3) for r in recs)
    # the residual computed here agrees with the one stored by the data preparation
    for r in recs[:4]:
        res = structure_symmetry_residual(r.structure, r.tensor, "elastic")
        assert res <= 0.05
        assert res == pytest.approx(r.meta["sym_residual"], abs=2e-6)


def test_nearly_symmetric_cell_uses_orthogonalized_operations() -> None:
    # a cubic cell strained by 0.2 %: spglib (symprec 0.01 A) still finds m-3m, but the Cartesian
    # operations are then not exactly orthogonal; they must be orthogonalized, not rejected
    strained = Structure(Lattice([[4.0, 0, 0], [0.008, 4.0, 0], [0, 0, 4.0]]), ["Cs", "Cl"],
                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(strained, symprec=0.01).get_point_group_operations(cartesian=True)
    assert len(ops) == 48
    assert max(np.abs(op.rotation_matrix @ op.rotation_matrix.T - np.eye(3)).max() for op in ops) > 1e-4
    for op in ops:
        g = records_mod.nearest_orthogonal(op.rotation_matrix)
        assert np.allclose(g @ g.T, np.eye(3), atol=1e-12)
        assert np.sign(np.linalg.det(g)) == np.sign(np.linalg.det(op.rotation_matrix))
    assert structure_symmetry_residual(strained, np.eye(3) * 4.0, "dielectric") < 1e-12
    assert structure_symmetry_residual(strained, np.diag([4.0, 4.0, 5.0]), "dielectric") > 0.05


def test_dielectric_parts_are_read_and_validated(tmp_path: Path) -> None:
    nacl = _rocksalt()

    def line(mid: str, el, ion, total=None) -> str:
        d = json.loads(_line(mid, nacl, np.asarray(el) + np.asarray(ion) if total is None else total))
        if el is not None:
            d["tensor_electronic"] = np.asarray(el).tolist()
        if ion is not None:
            d["tensor_ionic"] = np.asarray(ion).tolist()
        return json.dumps(d)

    el, ion = np.eye(3) * 2.0, np.eye(3) * 3.0
    lines = [
        line("ok-1", el, ion),
        line("sum-1", el, ion, total=(np.eye(3) * 6.0).tolist()),  # parts do not add up
        json.loads(line("half-1", el, ion)) and json.dumps({**json.loads(line("half-1", el, ion)), "tensor_ionic": None}),
        line("nan-1", el, np.where(np.eye(3) > 0, np.nan, 0.0), total=(np.eye(3) * 5.0).tolist()),
        _line("noparts-1", nacl, np.eye(3) * 5.0),
    ]
    path = _write(tmp_path / "dielectric_mp2099.jsonl.gz", lines)
    recs = load_records("dielectric", "mp", root=path.parent, check_symmetry=False)
    assert {r.material_id: sorted(r.parts) for r in recs} == {"ok-1": ["electronic", "ionic"], "noparts-1": []}
    assert np.allclose(recs[0].parts["ionic"], ion)
    skipped = {s.material_id: s.reason for s in recs.report.skipped}
    assert skipped == {"sum-1": "parts", "half-1": "parts", "nan-1": "parts"}
