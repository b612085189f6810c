"""Execution of the transfer study on Dask (:mod:`irreptensor_ml.transfer.execute`): a local cluster
(``workers > 1``) gives the runs of the sequential path, an existing cluster (``scheduler_address``)
keeps the dependency rules, and a stopped study leaves no worker process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from irreptensor_ml.transfer.presets import load_study_config

from run_id_fixture import TINY_TRUNK, synthetic_study_data

REPO = Path(__file__).resolve().parents[2]

#: pretraining + scratch and frozen (which starts from the pretraining run) on the synthetic data
#: of ``run_id_fixture`` (its validation side has elastic and piezoelectric tensors)
TINY = {
    "name": "dask",
    "data": {"sources": ["mp"], "cutoff": 4.0, "batch_size": 8, "check_symmetry": False},
    "train": {
        "model": {"trunk": TINY_TRUNK},
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "trainer": {"max_epochs": 1, "early_stopping_patience": 1, "accelerator": "cpu", "num_threads": 1,
                    "enable_progress_bar": False},
    },
    "pretrain": {"seeds": [0], "overrides": {}},
    "targets": ["piezoelectric"],
    "strategies": ["scratch", "frozen"],
    "fractions": [1.0],
    "seeds": [0],
    "bootstrap": {"n_resamples": 200},
    "workers": 1,
    "baselines_dir": None,
}


def _tiny(root: Path, *overrides: str) -> tuple[dict, Path]:
    """The TINY config with ``results_dir`` under ``root`` and its data saved as a cache file."""
    config = load_study_config(TINY, [f"results_dir={root / 'study'}", *overrides])
    cache = synthetic_study_data(config).save(root / "data.pt")
    return config, cache


def _records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))}


def test_task_passes_the_study_settings_to_the_run(tmp_path, monkeypatch):
    """A worker's task hands the study's eval batch size and step floor (and the start model of a
    chained run) to ``execute_run``."""
    from irreptensor_ml.transfer import runner
    from irreptensor_ml.transfer.execute import _do_task
    from irreptensor_ml.transfer.plan import make_spec

    config = load_study_config("foundation-finetune-cpu", [f"results_dir={tmp_path}"])
    data = synthetic_study_data(config)
    spec = make_spec(config, data, {}, "foundation-finetune", "elastic", 0.5, 1, 0)
    seen = {}

    def fake_run(spec_, data_, model_path, **kwargs):
        seen.update(kwargs, spec=spec_)
        return {"run_id": spec_.run_id, "status": "finished", "val": {"frobenius_mae": 1.0}}

    monkeypatch.setattr(runner, "execute_run", fake_run)
    _do_task(spec.to_dict(), False, "train", str(tmp_path), 240, 7, data)
    assert seen["eval_batch_size"] == 7 and seen["min_train_steps"] == 240
    assert seen["spec"].min_train_steps == config["strategy_settings"]["foundation-finetune"]["min_train_steps"]
    assert seen["pretrained_model"] == tmp_path / "models" / f"{spec.pretrain_id}.pt"


def test_worker_reads_the_data_file_once(tmp_path):
    """A worker keeps the study data of its file (one load for all its runs), reads a rewritten
    file again, and names a file it cannot see."""
    from irreptensor_ml.transfer import execute

    config, cache = _tiny(tmp_path)
    first = execute._worker_data(str(cache))
    assert execute._worker_data(str(cache)) is first
    other = synthetic_study_data(load_study_config(TINY, ["data.cutoff=5.0"]))
    other.save(cache)
    assert execute._worker_data(str(cache)).fingerprint == other.fingerprint != first.fingerprint
    assert len(execute._WORKER_DATA) == 1
    with pytest.raises(FileNotFoundError, match="shared file system"):
        execute._worker_data(str(tmp_path / "missing.pt"))


def test_execution_settings_are_not_part_of_run_ids(tmp_path):
    from irreptensor_ml.transfer.cli import _configure
    from irreptensor_ml.transfer.plan import plan_pretrain, plan_runs

    base = load_study_config(TINY)
    moved = load_study_config(TINY, ["workers=4", "scheduler_address=tcp://node12:8786"])
    assert moved["scheduler_address"] == "tcp://node12:8786" and base["scheduler_address"] is None
    data = synthetic_study_data(base)

    def ids(cfg):
        pre = plan_pretrain(cfg, data)
        return sorted([s.run_id for s in pre.values()] + [s.run_id for s in plan_runs(cfg, data, pre)])

    assert ids(base) == ids(moved)
    with pytest.raises(ValueError, match="scheduler_address"):
        load_study_config(TINY, ["scheduler_address=8786"])  # YAML: an integer
    import argparse

    args = _configure(argparse.ArgumentParser()).parse_args(["--scheduler-address", "tcp://h:1", "--workers", "3"])
    assert args.scheduler_address == "tcp://h:1" and args.workers == 3


def test_local_dask_cluster_stores_the_runs_of_the_sequential_path(tmp_path):
    """``workers=2`` (a local Dask cluster) stores the same runs, with the same validation and
    test metrics, as ``workers=1`` (in this process); frozen waits for its pretraining run."""
    from irreptensor_ml.transfer.study import run_study

    torch.set_num_threads(1)
    config, cache = _tiny(tmp_path)
    logs: dict[int, list[str]] = {1: [], 2: []}
    for workers in (1, 2):
        run_study(config, from_cache=cache, results_dir=tmp_path / f"w{workers}", workers=workers,
                  report=False, log=logs[workers].append)
    seq, par = _records(tmp_path / "w1"), _records(tmp_path / "w2")
    assert len(seq) == 3 and sorted(seq) == sorted(par)
    for rid, rec in seq.items():
        for split in ("val", "test"):
            for key in ("frobenius_mae", "rmse"):
                if key in rec[split]:
                    assert par[rid][split][key] == pytest.approx(rec[split][key], rel=1e-6), (rid, split, key)
        assert (tmp_path / "w2" / "models" / f"{rid}.pt").is_file()
        assert (tmp_path / "w2" / "predictions" / f"{rid}.json").is_file()
    progress = [line for line in logs[2] if line.startswith("[")]
    assert len(progress) == 3 and all("/3] " in line for line in progress)
    assert any("2 local Dask workers" in line for line in logs[2])
    pre = next(i for i, line in enumerate(progress) if "pretrain" in line)
    assert pre < next(i for i, line in enumerate(progress) if "frozen" in line)
    # a rerun on Dask finds everything stored: no cluster, nothing executed
    again: list[str] = []
    run_study(config, from_cache=cache, results_dir=tmp_path / "w2", workers=2, report=False, log=again.append)
    assert any("3 of 3 runs already finished" in line for line in again), again
    assert not any(line.startswith("[") or "Dask" in line for line in again), again


@pytest.fixture(scope="module")
def dask_scheduler():
    """An existing Dask cluster (two worker processes) and its scheduler address."""
    from irreptensor_ml.transfer.execute import dask_client

    with dask_client(2) as client:
        yield client.scheduler.address


def test_failed_dependency_fails_its_dependants_on_dask(tmp_path, dask_scheduler):
    """On a cluster given by its address: the pretraining run fails (no elastic validation
    sample), so the frozen run that starts from it is not started and reported failed; scratch
    does not depend on it and is stored."""
    from irreptensor_ml.transfer.execute import execute_tasks
    from irreptensor_ml.transfer.plan import Task, plan_pretrain, plan_runs
    from irreptensor_ml.transfer.store import RunStore

    config = load_study_config(TINY, [f"results_dir={tmp_path / 'study'}"])
    data = synthetic_study_data(config)
    for k in data.indices("val", "elastic"):
        data.targets[k] = {p: v for p, v in data.targets[k].items() if p != "elastic"}
        data.record_uids[k] = [u for u in data.record_uids[k] if not u.startswith("elastic")]
    data._fingerprint = None
    assert not data.indices("val", "elastic")
    path = data.save(tmp_path / "data.pt")
    pre = plan_pretrain(config, data)
    tasks = [Task(s, True, "pretrain") for s in pre.values()]
    tasks += [Task(s, True, "final") for s in plan_runs(config, data, pre)]
    by = {t.spec.strategy if t.spec.kind != "pretrain" else "pretrain": t.run_id for t in tasks}
    store = RunStore(tmp_path / "study")
    lines: list[str] = []
    res = execute_tasks(tasks, data, store, data_path=path, scheduler_address=dask_scheduler, log=lines.append)
    assert res["skipped"] == 0 and res["executed"] == 1
    assert set(res["failed"]) == {by["pretrain"], by["frozen"]}
    assert "no validation sample of 'elastic'" in res["failed"][by["pretrain"]]
    assert res["failed"][by["frozen"]] == f"run {by['pretrain']} it starts from failed"
    assert store.load(by["scratch"]) is not None and store.load(by["frozen"]) is None
    assert sum(line.startswith("FAILED pretrain") for line in lines) == 1
    assert any(line.startswith("[1/3] scratch") for line in lines), lines
    # no scheduler at an address: a user error (ValueError), not a traceback of the comm layer
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(ValueError, match="cannot connect to the Dask scheduler"):
        execute_tasks(tasks, data, RunStore(tmp_path / "other"), data_path=path,
                      scheduler_address="tcp://127.0.0.1:9", log=lines.append)
    # workers that cannot see the data file are refused before anything runs
    with pytest.raises(ValueError, match="do not see"):
        execute_tasks(tasks, data, RunStore(tmp_path / "other"), data_path=tmp_path / "missing.pt",
                      scheduler_address=dask_scheduler, log=lines.append)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
# SIGKILL checks Dask's own nanny (workers end with their parent): slow, run with --runslow
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGKILL"])
def test_stopped_study_leaves_no_worker_processes(tmp_path, sig):
    """``irreptensor-ml transfer --workers 2`` stopped while its runs train: the local cluster's
    worker processes end with it (SIGTERM: the study closes the cluster and exits with 143;
    SIGKILL: Dask's nanny pipe ends them)."""
    config, cache = _tiny(tmp_path, "train.trainer.max_epochs=100000", "train.trainer.early_stopping_patience=100000")
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "irreptensor_ml.transfer", "--config", str(cfg_path), "--from-cache", str(cache),
         "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if "local Dask workers" in line:
                break
            assert time.time() < deadline, "the study did not start its cluster"
        while time.time() < deadline and len(workers) < 2:  # the worker processes (and their helpers)
            time.sleep(0.5)
            workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        time.sleep(2)  # let them pick up their runs
        workers = _children(proc.pid)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        deadline = time.time() + 30
        while _alive(workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(workers), f"worker processes {_alive(workers)} outlived the study"
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
            assert "stopped by SIGTERM" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)
