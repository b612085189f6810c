"""Tests of the ``irreptensor-ml`` command line (irreptensor_ml.cli.main) and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from irreptensor_ml import cli

REPO = Path(__file__).resolve().parents[2]


def _write_cif(path: Path) -> Path:
    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(path))
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one error line, got: {err!r}"
    return err


def test_parser_has_subcommands() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "evaluate", "predict"} <= set(sub.choices)


def test_predict_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.cif"
    assert cli.main(["predict", str(missing)]) == 2
    err = _error_line(capsys)
    assert err.startswith("irreptensor-ml predict: error: file not found:")
    assert str(missing) in err


def test_predict_bad_structure_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a oops\n")
    assert cli.main(["predict", str(bad)]) == 2
    err = _error_line(capsys)
    assert "cannot read a structure from" in err and str(bad) in err


def test_predict_unknown_property(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cif = _write_cif(tmp_path / "NaCl.cif")
    assert cli.main(["predict", str(cif), "--property", "magnetic"]) == 2
    err = _error_line(capsys)
    assert "unknown property 'magnetic'" in err


def test_predict_without_model_reports_missing_pretrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if (REPO / "irreptensor_ml" / "pretrained" / "elastic" / "model.pt").exists():
        pytest.skip("a pretrained elastic model is shipped; this tests its absence")
    cif = _write_cif(tmp_path / "NaCl.cif")
    assert cli.main(["predict", str(cif)]) == 2
    assert "no pretrained model is shipped for property 'elastic'" in _error_line(capsys)


def test_predict_missing_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cif = _write_cif(tmp_path / "NaCl.cif")
    assert cli.main(["predict", str(cif), "--model", str(tmp_path / "no_run")]) == 2
    err = _error_line(capsys)
    assert "model not found" in err and "no_run" in err


def test_evaluate_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", str(tmp_path / "no_run")]) == 2
    assert "run directory not found" in _error_line(capsys)


def test_train_bad_config_and_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Config errors stop ``train`` before any data is loaded (exit 2, one line naming the key)."""
    pytest.importorskip("irreptensor_ml.train.config", reason="model engineer's train.config not present")
    assert cli.main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    err = _error_line(capsys)
    assert "none.yaml" in err and "does not exist" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  max_epochs: 3\n")
    assert cli.main(["train", "--config", str(cfg), "--set", "trainer.max_epoch=2"]) == 2
    err = _error_line(capsys)
    assert "max_epoch" in err and "trainer" in err
    assert cli.main(["train", "--config", str(cfg), "--set", "cutoff"]) == 2
    assert "'cutoff'" in _error_line(capsys)


@pytest.fixture()
def saved_model(tmp_path: Path) -> Path:
    """Run directory with an untrained tiny elastic + dielectric model in the training package's format."""
    from irreptensor_ml.train import save_model

    model, norms = _tiny_predictor(("elastic", "dielectric"))
    save_model(tmp_path / "run" / "model.pt", model.float(),
               config={"data": {"cutoff": TINY_TRUNK["cutoff"]}})
    return tmp_path / "run"


def test_predict_table_and_json(tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pymatgen.analysis.elasticity import ElasticTensor

    import irreptensor as it
    from irreptensor_ml.predict import predict

    cif = _write_cif(tmp_path / "NaCl.cif")
    poscar = tmp_path / "POSCAR"
    Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]).to(
        filename=str(poscar))
    assert cli.main(["predict", str(cif), str(poscar), "--model", str(saved_model), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["formula"] for r in records] == ["NaCl", "ZnO"]
    expected = predict([cif, poscar], "elastic", saved_model)
    for rec, c in zip(records, expected):
        np.testing.assert_allclose(rec["voigt"], it.to_voigt(c, "elastic"), rtol=1e-10)
        assert list(rec["irreps"]) == ["0e[0]", "0e[1]", "2e[0]", "2e[1]", "4e"]
        et = ElasticTensor(c)
        assert rec["derived"]["K_VRH"] == pytest.approx(et.k_vrh, rel=1e-9)
        assert rec["derived"]["G_VRH"] == pytest.approx(et.g_vrh, rel=1e-9)
        assert rec["units"] == "GPa"

    assert cli.main(["predict", str(cif), "--model", str(saved_model / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert "NaCl" in out and "Voigt (xx yy zz yz xz xy):" in out and "K_VRH" in out
    voigt_rows = out.split("Voigt (xx yy zz yz xz xy):\n")[1].split("irreps")[0].strip().splitlines()
    assert len(voigt_rows) == 6 and all(len(r.split()) == 6 for r in voigt_rows)

    assert cli.main(["predict", str(cif), "--model", str(saved_model), "--property", "dielectric",
                     "--format", "json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    eps = np.asarray(rec["voigt"])
    assert eps.shape == (3, 3) and rec["units"] == ""
    np.testing.assert_allclose(eps, predict(cif, "dielectric", saved_model)[0], rtol=1e-10)
    assert rec["derived"] == pytest.approx({"mean_eigenvalue": np.trace(eps) / 3})


def test_predict_property_without_head(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cif = _write_cif(tmp_path / "NaCl.cif")
    assert cli.main(["predict", str(cif), "--model", str(saved_model), "--property", "piezoelectric"]) == 2
    err = _error_line(capsys)
    assert "has no head for property 'piezoelectric' (heads: elastic, dielectric)" in err


@pytest.mark.slow
def test_train_then_evaluate_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: ``train --config tiny`` (1 epoch, 24 records) then ``evaluate`` writes all files."""
    monkeypatch.setenv("IRREPTENSOR_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny", "--run-dir", str(run)]) == 0
    assert (run / "model.pt").is_file()
    assert cli.main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "| ewt25 |" in out
    names = {p.name for p in (run / "eval_test").iterdir()}
    assert {"metrics.json", "predictions.json", "learning_curves.png", "parity_dielectric.png",
            "parity_piezoelectric.png"} <= names
    summary = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert summary["split"] == "test" and set(summary["metrics"]) == {"dielectric", "piezoelectric"}


def test_debug_flag_reraises(tmp_path: Path) -> None:
    from irreptensor_ml.predict import StructureFileError

    with pytest.raises(StructureFileError, match="file not found"):
        cli.main(["--debug", "predict", str(tmp_path / "nope.cif")])


@pytest.mark.parametrize("case", ["missing", "bad"])
def test_console_entry_point_subprocess(tmp_path: Path, case: str) -> None:
    """``python -m irreptensor_ml.cli`` behaves like the installed entry point: exit 2 and exactly
    one stderr line (pymatgen's parse warnings for a bad file must not leak)."""
    path = tmp_path / "x.cif"
    if case == "bad":
        path.write_text("data_x\n_cell_length_a oops\n")
    proc = subprocess.run(
        [sys.executable, "-m", "irreptensor_ml.cli", "predict", str(path), "--property", "elastic"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    expected = "file not found" if case == "missing" else "cannot read a structure from"
    assert lines[0].startswith(f"irreptensor-ml predict: error: {expected}")
    assert str(path) in lines[0]


# ------------------------------------------------------------------ evaluation loop (evaluate.py)

TINY_TRUNK = {
    "embedding_dim": 8, "irreps_hidden": "8x0e+4x1o+4x2e+2x2o+2x3o+2x4e", "num_layers": 2,
    "cutoff": 4.0, "num_basis": 4, "radial_hidden": [8],
}


def _tiny_predictor(properties: tuple[str, ...]) -> tuple[object, dict]:
    import torch

    import irreptensor as it
    from irreptensor_ml.data.normalization import IrrepNormalizer
    from irreptensor_ml.model import TensorPredictor

    torch.manual_seed(0)
    model = TensorPredictor(trunk=TINY_TRUNK, heads={p: None for p in properties}).double()
    gen = torch.Generator().manual_seed(1)
    norms = {
        p: IrrepNormalizer().fit(torch.randn(20, it.dim(p), generator=gen, dtype=torch.float64) * 10 + 30,
                                 str(it.irreps(p)))
        for p in properties
    }
    for p, norm in norms.items():  # the model holds its normalization
        model.outputs[p].load_normalizer(norm.state_dict())
    return model, norms


def test_evaluate_model_masks_metrics_and_files(tmp_path: Path) -> None:
    import torch
    from pymatgen.core.tensors import Tensor

    import irreptensor as it
    from irreptensor_ml import metrics as M
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import structure_to_graph
    from irreptensor_ml.evaluate import evaluate_model
    from irreptensor_ml.predict import predict

    rng = np.random.default_rng(0)
    structures = [
        Structure(Lattice.from_parameters(3.9 + 0.05 * k, 3.95, 4.1, 90, 90, 90), ["Ba", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5 + 0.01 * k], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        for k in range(3)
    ]
    samples = []
    true_c = []
    for k, s in enumerate(structures):
        g = structure_to_graph(s, 4.0)
        g.material_id = f"m{k}"
        targets = {}
        if k != 1:  # sample m1 has no elastic target
            a = rng.normal(size=(6, 6)) * 10
            c = np.asarray(Tensor.from_voigt(a @ a.T + 100 * np.eye(6)))
            true_c.append(c)
            targets["elastic"] = torch.as_tensor(it.decompose(c, "elastic"))
        e = rng.normal(size=(3, 3, 3))
        targets["piezoelectric"] = torch.as_tensor(it.decompose(0.5 * (e + e.transpose(0, 2, 1)), "piezoelectric"))
        samples.append((g, targets))
    batches = [collate(samples[:2], {"elastic": 21, "piezoelectric": 18}),
               collate(samples[2:], {"elastic": 21, "piezoelectric": 18})]
    model, norms = _tiny_predictor(("elastic", "piezoelectric"))
    result = evaluate_model(model, batches, tmp_path / "eval", split="test")

    assert result.predictions["elastic"].material_ids == ["m0", "m2"]
    assert result.predictions["piezoelectric"].material_ids == ["m0", "m1", "m2"]
    pred_c = predict([structures[0], structures[2]], "elastic", (model, norms, {"data": {"cutoff": 4.0}}))
    expected = M.tensor_metrics(pred_c, np.stack(true_c), "elastic")
    assert result.metrics["elastic"] == pytest.approx(expected, rel=1e-9, nan_ok=True)

    names = sorted(p.name for p in result.files)
    assert names == ["metrics.json", "parity_elastic.png", "parity_piezoelectric.png", "predictions.json"]
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["n_samples"] == {"elastic": 2, "piezoelectric": 3}
    assert summary["metrics"]["elastic"]["K_VRH_mae"] == pytest.approx(expected["K_VRH_mae"])
    preds = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert [r["material_id"] for r in preds["elastic"]] == ["m0", "m2"]
    np.testing.assert_allclose(preds["elastic"][0]["true_voigt"], it.to_voigt(true_c[0], "elastic"), atol=1e-9)
    assert np.asarray(preds["piezoelectric"][0]["pred_voigt"]).shape == (3, 6)


def test_evaluate_model_rejects_property_without_head() -> None:
    from irreptensor_ml.evaluate import collect_predictions

    model, norms = _tiny_predictor(("elastic",))
    with pytest.raises(ValueError, match="model has no head for property 'dielectric'"):
        collect_predictions(model, [], properties=["dielectric"])


def test_predict_one_bad_file_keeps_the_others(tmp_path: Path, saved_model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not parse gets an error entry and exit status 2; the good file is predicted."""
    cif = _write_cif(tmp_path / "NaCl.cif")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a oops\n")
    assert cli.main(["predict", str(bad), str(cif), "--model", str(saved_model), "--format", "json"]) == 2
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert "error" in records[0] and records[0]["file"] == str(bad)
    assert records[1]["formula"] == "NaCl" and np.all(np.isfinite(records[1]["voigt"]))
    assert str(bad) in captured.err and "cannot read a structure from" in captured.err
