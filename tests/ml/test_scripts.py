"""The helper scripts under ``scripts/`` that do not need a study or a GPU to check."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_times_tables_strategy_and_target(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (strategy, target, t) in enumerate([("scratch", "elastic", 10.0), ("scratch", "elastic", 30.0),
                                               ("foundation-frozen", "elastic", 4.0)]):
        rec = {"run_id": f"{strategy}-{target}-f1-s{i}-x", "spec": {"strategy": strategy, "target": target},
               "wall_time_s": t}
        (runs / f"{i}.json").write_text(json.dumps(rec))
    assert _load("run_times").main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| scratch | elastic | 2 | 20.0 | 40 |" in out
    assert "| foundation-frozen | elastic | 1 | 4.0 | 4 |" in out


def test_run_times_without_records_is_an_error(tmp_path, capsys):
    assert _load("run_times").main([str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_run_times_names_a_file_that_is_not_a_run_record(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "odd.json").write_text(json.dumps({"run_id": "x"}))
    assert _load("run_times").main([str(tmp_path)]) == 2
    assert "odd.json: not a run record" in capsys.readouterr().err


def test_trim_sevenn_keeps_only_sevennet0_and_rewrites_record(tmp_path):
    wheels = _load("foundation_wheels")
    keep = "sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"
    drop = "sevenn/pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth"
    record = "sevenn-0.13.0.dist-info/RECORD"
    wheel = tmp_path / "sevenn-0.13.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("sevenn/__init__.py", "")
        z.writestr(keep, b"k" * 10)
        z.writestr(drop, b"d" * 10)
        z.writestr(record, f"sevenn/__init__.py,,\n{keep},,\n{drop},,\n{record},,\n")
    wheels.trim_sevenn(wheel)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        lines = z.read(record).decode().splitlines()
    assert keep in names and drop not in names and "sevenn/__init__.py" in names
    assert [l.split(",")[0] for l in lines] == ["sevenn/__init__.py", keep, record]


def test_wurtzite_polarity_flips_with_the_structure() -> None:
    """Inverting a wurtzite (Zn-polar -> O-polar) with the same label flips the agreement sign."""
    from types import SimpleNamespace

    import numpy as np
    from pymatgen.core import Lattice, Structure

    audit = _load("piezo_audit")
    u = 0.382
    coords = [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]]
    zn_polar = Structure(Lattice.hexagonal(3.25, 5.21), ["Zn", "Zn", "O", "O"], coords)
    o_polar = Structure(zn_polar.lattice, zn_polar.species, [[x, y, -z] for x, y, z in coords])
    tensor = np.zeros((3, 3, 3))
    tensor[2, 2, 2] = 1.0
    records = [SimpleNamespace(structure=s, tensor=tensor, material_id=name, meta={})
               for name, s in (("zn", zn_polar), ("o", o_polar))]
    result = audit.wurtzite_polarity(records)
    assert result["n"] == 2
    assert [row["agreement"] for row in result["records"]] == [1, -1]


def test_data_curve_rejects_a_fraction_outside_0_1(capsys):
    with pytest.raises(SystemExit):
        _load("data_curve").main(["piezoelectric", "--fractions", "0", "0.5"])
    assert "--fractions: 0.0 is not in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [("{width: 16", "not JSON"), ("[16]", "expected a JSON object")])
def test_tune_enqueue_needs_a_json_object(text, message, capsys):
    with pytest.raises(SystemExit):
        _load("tune").main(["piezoelectric", "--enqueue", text, "--out", "/nonexistent"])
    assert message in capsys.readouterr().err


def test_compare_shipped_needs_a_study_data_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _load("compare_shipped").main(["--study", str(tmp_path)])
    assert "holds no study-data file" in capsys.readouterr().err


if __name__ == "__main__":
    pytest.main([__file__])
