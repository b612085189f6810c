"""End-to-end training tests on a handful of real records with the shipped tiny config:
run records, weights-only export, resuming from ``last.ckpt``, and (slow) 2-process DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from irreptensor_ml.data import TensorDataModule
from irreptensor_ml.train import fit, load_config, load_model
from irreptensor_ml.train.module import TensorLightningModule

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def _epochs(metrics: Path) -> list[int]:
    rows = list(csv.DictReader(open(metrics, newline="")))
    return sorted({int(r["epoch"]) for r in rows if r.get("val/loss")})


def test_fit_records_exports_and_resumes(tmp_path, cache_dir):
    run = tmp_path / "run"
    overrides = [f"data.cache_dir={cache_dir}"]
    model_path = fit("tiny", run, overrides)

    # run records beside the checkpoint
    assert model_path == run / "model.pt"
    for name in ("config.yaml", "run_info.json", "metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and info["epochs_completed"] == 1
    assert set(info["data"]["hashes"]) == {"dielectric_mp2017.jsonl.gz", "piezoelectric_mp2015.jsonl.gz"}
    assert all(len(h) == 64 for h in info["data"]["hashes"].values())
    assert set(info["data"]["split"].values()) <= {"train", "val", "test"} and info["data"]["split"]
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["e3nn"]
    assert info["hardware"]["cpu_count"] >= 1
    assert yaml.safe_load((run / "config.yaml").read_text()) == info["config"]
    assert _epochs(run / "metrics.csv") == [0]

    # checkpoints contain no arbitrary pickles
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0
    payload = torch.load(model_path, weights_only=True)
    assert payload["format"] == "irreptensor_ml.model"

    # the exported model reproduces the Lightning module's predictions
    model, normalizers, config = load_model(run)
    assert set(normalizers) == {"dielectric", "piezoelectric"}
    assert config["data"]["limit"] == 24
    dm = TensorDataModule(config["data"])
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    module = TensorLightningModule.load_from_checkpoint(info["best_checkpoint"], weights_only=True)
    module.eval()
    with torch.no_grad():
        expected = module(batch)
        got = model(batch)
    for prop in expected:
        assert torch.allclose(got[prop], expected[prop], atol=1e-6)
        assert torch.equal(normalizers[prop].scale, module.normalizer(prop).scale)
    # float64 reload (for exact-equivariance work) gives the same numbers
    model64, _, _ = load_model(model_path, dtype=torch.float64)
    with torch.no_grad():
        got64 = model64(batch.to(torch.float64))
    for prop in expected:
        assert torch.allclose(got64[prop].float(), expected[prop], atol=1e-4)

    # resume: the epoch counter continues from last.ckpt and the metric history is kept
    fit("tiny", run, overrides + ["trainer.max_epochs=2"])
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert info["epochs_completed"] == 2
    assert [h["epochs_completed"] for h in info["history"]] == [1]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert _epochs(run / "metrics.csv") == [0, 1]


def test_pretrained_trunk_run_restores_without_the_pretrained_file(tmp_path, cache_dir):
    """``model.pretrained_trunk`` (resolved by fit, copied by transfer_trunk) starts the run from
    that model's trunk; its checkpoints and model.pt hold the trunk, so they load after the
    pretrained file is gone."""
    from irreptensor_ml.model import TensorPredictor
    from irreptensor_ml.train import save_model

    torch.manual_seed(5)
    trunk_cfg = load_config("tiny")["model"]["trunk"]
    source = TensorPredictor(trunk_cfg, {"elastic": None})
    pre = save_model(tmp_path / "pre" / "model.pt", source, {"data": {"cutoff": trunk_cfg["cutoff"]}})
    run = tmp_path / "run"
    fit("tiny", run, [f"data.cache_dir={cache_dir}", f"model.pretrained_trunk={pre}", "model.freeze_trunk=true"])
    info = json.loads((run / "run_info.json").read_text())
    assert info["config"]["model"]["pretrained_trunk"] == str(pre)
    assert info["config"]["model"]["trunk"] == dict(source.trunk.config)
    expected = source.trunk.state_dict()
    pre.unlink()
    module = TensorLightningModule.load_from_checkpoint(info["best_checkpoint"], weights_only=True)
    assert module.hparams["model"]["pretrained_trunk"] == str(pre)
    for loaded in (module.model, load_model(run)[0], load_model(info["best_checkpoint"])[0]):
        state = loaded.trunk.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items())  # frozen: the pretrained trunk


def test_load_model_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="neither"):
        load_model(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="neither model.pt"):
        load_model(tmp_path)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, cache_dir):
    """2-process DDP (gloo) on CPU for one tiny epoch, launched like a user would."""
    run = tmp_path / "ddp"
    cfg = load_config("tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "irreptensor_ml.train", "tiny", str(run),
        f"data.cache_dir={cache_dir}", "trainer.strategy=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "MEMBER: 2/2" in log, "expected Lightning to start a second process"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished"
    assert info["epochs_completed"] == cfg["trainer"]["max_epochs"]
    assert info["config"]["trainer"]["strategy"] == "ddp"
    model, normalizers, _ = load_model(run)
    assert set(model.heads) == set(normalizers) == {"dielectric", "piezoelectric"}
