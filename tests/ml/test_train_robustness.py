"""Reliability of training runs and model files (issue 15, findings 3, 4, 5, 8).

Training history survives interrupted resumes; a bad checkpoint is named instead of crashing;
a moved run directory resumes from its newest own checkpoint; SIGTERM leaves a recorded,
non-zero-exit, refused-by-default run; one run directory is used by one training at a time;
bad model files and a bad ``trainer.max_epochs`` give one-line errors.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

from irreptensor_ml import cli
from irreptensor_ml.train import fit, load_config, load_model
from irreptensor_ml.train.checkpoint import ModelFileError, UnfinishedRunError, save_model
from irreptensor_ml.train.fit import RunDirectoryLocked, TrainingInterrupted
from irreptensor_ml.train.module import TensorLightningModule


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 1-epoch tiny run; tests work on copies of it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    fit("tiny", run, [f"data.cache_dir={cache_dir}"])
    return run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def _rows(metrics: Path) -> list[dict[str, str]]:
    with open(metrics, newline="") as fh:
        return list(csv.DictReader(fh))


def _epochs(metrics: Path) -> list[int]:
    return sorted({int(r["epoch"]) for r in _rows(metrics) if r.get("val/loss")})


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _stop_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, how: str) -> None:
    """Make the next training stop when ``epoch`` starts: by an exception or by SIGTERM."""

    def hook(self: TensorLightningModule) -> None:
        if self.current_epoch == epoch:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler stops at the next batch
            else:
                raise RuntimeError("simulated crash")

    monkeypatch.setattr(TensorLightningModule, "on_train_epoch_start", hook, raising=False)


# ------------------------------------------------------------------------- 3. training history


def test_interrupted_resume_keeps_earlier_history(tmp_path, one_epoch_run, cache_dir, monkeypatch):
    """The rows of the earlier session stay in metrics.csv although the resume never returns."""
    run = _copy(one_epoch_run, tmp_path / "run")
    _stop_at_epoch(monkeypatch, 2, "crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit("tiny", run, [f"data.cache_dir={cache_dir}", "trainer.max_epochs=4"])
    assert _epochs(run / "metrics.csv") == [0, 1]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed" and "simulated crash" in info["error"]
    monkeypatch.undo()
    fit("tiny", run, [f"data.cache_dir={cache_dir}", "trainer.max_epochs=3"])
    assert _epochs(run / "metrics.csv") == [0, 1, 2]
    assert len([r for r in _rows(run / "metrics.csv") if r.get("val/loss")]) == 3, "a replayed epoch must not be listed twice"


def test_truncated_checkpoint_is_named_and_history_kept(tmp_path, one_epoch_run, cache_dir):
    run = _copy(one_epoch_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    metrics_before = (run / "metrics.csv").read_text()
    with pytest.raises(ModelFileError) as err:
        fit("tiny", run, [f"data.cache_dir={cache_dir}", "trainer.max_epochs=2"])
    msg = str(err.value)
    assert str(last) in msg and "delete" in msg and len(msg.splitlines()) == 1
    assert "weights_only=False" not in msg
    assert (run / "metrics.csv").read_text() == metrics_before


def test_moved_run_resumes_from_its_newest_checkpoint(tmp_path, one_epoch_run, cache_dir):
    """A moved run keeps its best/last bookkeeping: no last-v1.ckpt, no stale restarts."""
    old = _copy(one_epoch_run, tmp_path / "old")
    run = tmp_path / "moved"
    old.rename(run)
    overrides = [f"data.cache_dir={cache_dir}"]
    fit("tiny", run, overrides + ["trainer.max_epochs=2"])
    fit("tiny", run, overrides + ["trainer.max_epochs=3"])
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert len([n for n in names if n.startswith("best")]) == 1, names
    assert _ckpt_epoch(run / "checkpoints" / "last.ckpt") == 2
    info = json.loads((run / "run_info.json").read_text())
    assert info["epochs_completed"] == 3
    assert info["best_checkpoint"].startswith(str(run.resolve() / "checkpoints"))
    assert _epochs(run / "metrics.csv") == [0, 1, 2]


def test_resume_picks_newest_checkpoint_of_the_folder(tmp_path, one_epoch_run, cache_dir):
    """A stale last.ckpt beside a newer last-v1.ckpt (left by older versions) is not resumed."""
    run = _copy(one_epoch_run, tmp_path / "run")
    ckpts = run / "checkpoints"
    stale = (ckpts / "last.ckpt").read_bytes()
    fit("tiny", run, [f"data.cache_dir={cache_dir}", "trainer.max_epochs=2"])
    (ckpts / "last.ckpt").rename(ckpts / "last-v1.ckpt")
    (ckpts / "last.ckpt").write_bytes(stale)
    fit("tiny", run, [f"data.cache_dir={cache_dir}", "trainer.max_epochs=3"])
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumed_from"] == str(ckpts / "last-v1.ckpt")
    assert _epochs(run / "metrics.csv") == [0, 1, 2]
    assert _ckpt_epoch(ckpts / "last.ckpt") == 2


# ---------------------------------------------------------------------------------- 4. SIGTERM


def test_sigterm_exits_nonzero_and_run_is_refused(tmp_path, one_epoch_run, cache_dir, monkeypatch, capsys):
    run = _copy(one_epoch_run, tmp_path / "run")
    (run / "model.pt").unlink()  # as if the first session had been stopped too
    _stop_at_epoch(monkeypatch, 1, "sigterm")
    from irreptensor_ml.train.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["tiny", str(run), f"data.cache_dir={cache_dir}", "trainer.max_epochs=3"])
    assert isinstance(exc.value, TrainingInterrupted) and exc.value.code == 128 + signal.SIGTERM
    assert "interrupted" in capsys.readouterr().err
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGTERM"
    assert not (run / "model.pt").exists()

    with pytest.raises(UnfinishedRunError, match="not finished") as err:
        load_model(run)
    assert str(run) in str(err.value) and "last.ckpt" in str(err.value)
    model, _, _ = load_model(run / "checkpoints" / "last.ckpt")  # explicit: the user's choice
    assert model.properties


def test_model_of_an_earlier_session_loads_with_a_warning(tmp_path, one_epoch_run):
    """A stopped resume keeps the earlier session's model.pt usable, but says so."""
    run = _copy(one_epoch_run, tmp_path / "run")
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps({**info, "status": "interrupted"}))
    with pytest.warns(UserWarning, match="'interrupted'"):
        load_model(run)


def test_cli_train_sigterm_exit_status(tmp_path, cache_dir, monkeypatch, capsys):
    _stop_at_epoch(monkeypatch, 0, "sigterm")
    status = cli.main(["train", "--config", "tiny", "--run-dir", str(tmp_path / "run"),
                       "--set", f"data.cache_dir={cache_dir}"])
    assert status == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err


def test_predict_and_evaluate_refuse_unfinished_run(tmp_path, one_epoch_run, capsys):
    run = _copy(one_epoch_run, tmp_path / "run")
    (run / "model.pt").unlink()
    cif = tmp_path / "NaCl.cif"
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    for argv in (["predict", str(cif), "--model", str(run), "--property", "dielectric"],
                 ["evaluate", str(run), "--no-plots"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not finished" in err and str(run) in err, err


@pytest.fixture
def sigterm_fallback():
    """A SIGTERM that nothing in the training handles reaches this handler (a RuntimeError)
    instead of killing the test process."""

    def fallback(signum, frame):
        raise RuntimeError("SIGTERM reached the default handler: the training does not handle it here")

    previous = signal.signal(signal.SIGTERM, fallback)
    yield fallback
    signal.signal(signal.SIGTERM, previous)


def _refused_by_predict_and_evaluate(run: Path, tmp_path: Path, capsys) -> None:
    cif = tmp_path / "NaCl.cif"
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    capsys.readouterr()
    for argv in (["predict", str(cif), "--model", str(run), "--property", "dielectric"],
                 ["evaluate", str(run), "--no-plots"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not finished" in err and "'interrupted'" in err, err


def test_sigterm_before_training_is_recorded(tmp_path, cache_dir, monkeypatch, capsys, sigterm_fallback):
    """While the data load, Lightning's handler is not installed yet: it must still be a recorded,
    non-zero stop, not a silent death that leaves run_info.json 'running' (or nothing)."""
    from irreptensor_ml.data.datamodule import TensorDataModule

    setup = TensorDataModule.setup

    def setup_then_sigterm(self, *args, **kwargs):
        setup(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TensorDataModule, "setup", setup_then_sigterm)
    run = tmp_path / "run"
    from irreptensor_ml.train.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["tiny", str(run), f"data.cache_dir={cache_dir}"])
    assert isinstance(exc.value, TrainingInterrupted) and exc.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM before its training started" in err
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is sigterm_fallback  # the caller's handler is back
    monkeypatch.undo()
    _refused_by_predict_and_evaluate(run, tmp_path, capsys)


@pytest.mark.parametrize("when", ["after_last_epoch", "export"])
def test_sigterm_at_the_end_or_during_export_is_recorded(
    tmp_path, one_epoch_run, cache_dir, monkeypatch, capsys, sigterm_fallback, when
):
    """A SIGTERM after the last batch (Lightning only takes note of it) or while model.pt is
    written: exit 143, run_info.json 'interrupted', no model.pt nor temporary file; the same
    command then finishes the run."""
    run = _copy(one_epoch_run, tmp_path / "run")
    (run / "model.pt").unlink()
    if when == "export":
        fit_module = sys.modules["irreptensor_ml.train.fit"]
        save_model = fit_module.save_model

        def sigterm_then_save(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return save_model(*args, **kwargs)

        monkeypatch.setattr(fit_module, "save_model", sigterm_then_save)
    else:
        monkeypatch.setattr(TensorLightningModule, "on_train_end",
                            lambda self: os.kill(os.getpid(), signal.SIGTERM), raising=False)
    overrides = [f"data.cache_dir={cache_dir}", "trainer.max_epochs=2"]
    with pytest.raises(TrainingInterrupted) as exc:
        fit("tiny", run, overrides)
    assert exc.value.code == 128 + signal.SIGTERM and "after its last epoch" in str(exc.value)
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGTERM"
    assert info["epochs_completed"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == [
        "checkpoints", "config.yaml", "hparams.yaml", "metrics.csv", "run_info.json"]
    monkeypatch.undo()
    _refused_by_predict_and_evaluate(run, tmp_path, capsys)
    fit("tiny", run, overrides)
    assert json.loads((run / "run_info.json").read_text())["status"] == "finished"
    assert (run / "model.pt").is_file()


# ------------------------------------------------------------------------------------- 5. lock


def test_second_training_into_a_locked_run_dir_is_refused(tmp_path, cache_dir):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another training holds the directory
        with pytest.raises(RunDirectoryLocked) as err:
            fit("tiny", run, [f"data.cache_dir={cache_dir}"])
        assert str(run) in str(err.value) and len(str(err.value).splitlines()) == 1
        assert not (run / "run_info.json").exists()
        status = cli.main(["train", "--config", "tiny", "--run-dir", str(run),
                           "--set", f"data.cache_dir={cache_dir}"])
        assert status == 2
    fit("tiny", run, [f"data.cache_dir={cache_dir}"])  # released by the holder: trains
    with open(run / ".lock", "a+") as probe:  # and released by fit when it returns
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ----------------------------------------------------------------------------- 8. model files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from irreptensor_ml.model import TensorPredictor

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+4x1o+4x2e", "num_layers": 1, "cutoff": 4.0,
             "num_basis": 4, "radial_hidden": [8]}
    torch.manual_seed(0)
    model = TensorPredictor(trunk=trunk, heads={"dielectric": None})
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", model, {"data": {"cutoff": 4.0}})


def _broken(kind: str, good: Path, dest: Path) -> Path:
    if kind == "text":
        dest.write_text("this is not a model\n")
    elif kind == "truncated":
        data = good.read_bytes()
        dest.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        torch.save({"format": "irreptensor_ml.model", "obj": argparse.Namespace(a=1)}, dest)
    else:
        payload = torch.load(good, weights_only=True)
        if kind == "no_config":
            del payload["model_config"]
        elif kind == "missing_key":
            del payload["state_dict"][next(iter(payload["state_dict"]))]
        elif kind == "shape":
            key = next(k for k, v in payload["state_dict"].items() if v.ndim == 2)
            payload["state_dict"][key] = torch.zeros(3, 3)
        elif kind == "bad_config":
            payload["model_config"] = {"trunk": "nonsense"}
        torch.save(payload, dest)
    return dest


KINDS = {
    "text": "not a readable torch file",
    "truncated": "not a readable torch file",
    "pickle": "refused",
    "no_config": "lacks 'model_config'",
    "missing_key": "missing",
    "shape": "shape",
    "bad_config": "model_config",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_model_files_give_one_line_errors(tmp_path, model_file, kind, capsys):
    bad = _broken(kind, model_file, tmp_path / f"{kind}.pt")
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    msg = str(err.value)
    assert str(bad) in msg and KINDS[kind] in msg, msg
    assert len(msg.splitlines()) == 1 and "weights_only=False" not in msg

    cif = tmp_path / "NaCl.cif"
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    assert cli.main(["predict", str(cif), "--model", str(bad), "--property", "dielectric"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and str(bad) in line and "weights_only=False" not in line


@pytest.mark.parametrize("value", ["-5", "0", "1.5", "true", "'3'"])
def test_max_epochs_must_be_a_positive_int(tmp_path, value, capsys):
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        load_config("tiny", [f"trainer.max_epochs={value}"])
    argv = ["train", "--config", "tiny", "--run-dir", str(tmp_path / "run"), "--set", f"trainer.max_epochs={value}"]
    assert cli.main(argv) == 2
    assert "trainer.max_epochs" in capsys.readouterr().err


def test_checkpoint_callback_state_key_matches_lightning(tmp_path):
    """Checkpoints written before the moved-directory fix (plain ModelCheckpoint) still restore
    the best/last bookkeeping: the callback's state key is unchanged."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from irreptensor_ml.train.trainer import _RunCheckpoint

    kwargs = {"dirpath": tmp_path, "monitor": "val/loss", "mode": "min", "save_top_k": 1, "save_last": True}
    assert _RunCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
