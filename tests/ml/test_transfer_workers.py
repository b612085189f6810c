"""Worker processes of a multi-process study end when the study process is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

_PARENT = r"""
import concurrent.futures as cf, multiprocessing, os, sys, time
from irreptensor_ml.transfer.execute import exit_with_parent

def init():
    exit_with_parent(interval=0.2)

def pid_then_sleep():
    return os.getpid()

if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init)
    print(pool.submit(pid_then_sleep).result(), flush=True)
    pool.submit(time.sleep, 600)
    time.sleep(0.5)
    os._exit(0)  # die like a killed process: no pool shutdown
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX parent-pid semantics")
def test_worker_exits_when_the_study_process_dies(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    worker = int(out.stdout.split()[0])
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, 9)
    pytest.fail(f"worker {worker} outlived its parent by 20 s")


def test_task_passes_the_study_settings_to_the_run(tmp_path, monkeypatch):
    """A worker's task hands the study's eval batch size and step floor (and the start model of a
    chained run) to ``execute_run``."""
    from irreptensor_ml.transfer import runner
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.execute import _do_task
    from irreptensor_ml.transfer.plan import make_spec

    from run_id_fixture import synthetic_study_data

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
