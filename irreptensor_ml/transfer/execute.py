"""Execution of the transfer study's runs: what still needs work, and running it -- in this process
(``workers <= 1``) or in a pool of ``workers`` spawned processes."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from irreptensor_ml.transfer.plan import Task
from irreptensor_ml.transfer.runner import RunSpec
from irreptensor_ml.transfer.store import RunStore
from irreptensor_ml.transfer.studydata import StudyData

logger = logging.getLogger(__name__)

__all__ = ["execute_tasks", "exit_with_parent", "import_runs", "needs", "prepare_features"]

_WORKER_DATA: StudyData | None = None


def _quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def exit_with_parent(interval: float = 2.0) -> threading.Thread:
    """End this (worker) process once its parent is gone.

    A study killed without a chance to stop its pool (``SIGKILL``, ``timeout --kill-after``) would
    otherwise leave its spawned workers waiting forever on a dead pipe, holding memory and GPU contexts.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _worker_init(data_path: str) -> None:
    global _WORKER_DATA
    exit_with_parent()
    _quiet()
    _WORKER_DATA = StudyData.load(data_path)


def needs(task: Task, store: RunStore) -> str | None:
    """``"train"`` (train, and test if final), ``"test"`` (test only) or ``None`` (done)."""
    rec = store.load(task.run_id)
    if rec is None:
        return "train"
    part = task.spec.study_target if task.spec.part else None
    if task.final and ("test" not in rec or (part and part not in (rec.get("test_parts") or {}))):
        return "test" if store.model_path(task.run_id).is_file() else "train"
    return None


def _do_task(
    spec_dict: Mapping[str, Any], final: bool, work: str, results_dir: str, min_train_steps: int,
    eval_batch_size: int, data: StudyData | None = None,
) -> dict[str, Any]:
    """Execute one task (in a worker or in-process); writes the store files; returns a summary."""
    from irreptensor_ml.transfer.runner import evaluate_test, execute_run

    _quiet()
    data = data if data is not None else _WORKER_DATA
    if data is None:
        raise RuntimeError("worker has no study data (initializer not run)")
    spec = RunSpec.from_dict(spec_dict)
    store = RunStore(results_dir)
    if work == "train":
        pre = store.model_path(spec.pretrain_id) if spec.pretrain_id else None
        record = execute_run(
            spec, data, store.model_path(spec.run_id), pretrained_model=pre,
            min_train_steps=min_train_steps, eval_batch_size=eval_batch_size,
            feature_cache_dir=store.feature_cache_dir,
        )
        store.save(record)
    if final:
        metrics, preds = evaluate_test(spec, data, store.model_path(spec.run_id), eval_batch_size=eval_batch_size,
                                       feature_cache_dir=store.feature_cache_dir)
        store.save_test(spec.run_id, metrics, preds)
    rec = store.load(spec.run_id) or {}
    return {
        "run_id": spec.run_id,
        "val_frobenius_mae": (rec.get("val") or {}).get("frobenius_mae"),
        "test_frobenius_mae": (rec.get("test") or {}).get("frobenius_mae"),
        "wall_time_s": rec.get("wall_time_s"),
        "epochs": (rec.get("train") or {}).get("epochs_run"),
    }


def _priority(spec: RunSpec) -> tuple:
    """Execution order: pretraining first, then seed by seed (a study stopped part-way leaves
    whole seeds, which can be reported with ``seeds`` narrowed), the longest runs (multitask,
    large fractions) first within a seed so that parallel workers finish together."""
    return (spec.kind != "pretrain", int(spec.seed), spec.strategy != "multitask", -float(spec.fraction),
            spec.target, spec.strategy, spec.run_id)


def execute_tasks(
    tasks: Sequence[Task],
    data: StudyData,
    store: RunStore,
    *,
    workers: int = 1,
    data_path: Path | None = None,
    min_train_steps: int = 0,
    eval_batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the tasks that still need work (dependencies first); returns counts.

    Returns ``{"skipped": n, "executed": n, "failed": {run_id: error}}``. A task whose
    pretraining run failed is not started (reported as failed).
    """
    unique: dict[str, Task] = {}
    for t in tasks:  # a run listed twice (e.g. trial and final) -> final wins
        if t.run_id not in unique or t.final:
            unique[t.run_id] = t
    todo = {rid: (t, needs(t, store)) for rid, t in unique.items()}
    todo = {rid: tw for rid, tw in todo.items() if tw[1] is not None}
    skipped = len(unique) - len(todo)
    total = len(todo)
    if skipped:
        log(f"{skipped} of {len(unique)} runs already finished (stored in {store.root}); skipping them")
    failed: dict[str, str] = {}
    done = 0

    def ready(t: Task) -> bool:
        dep = t.spec.pretrain_id
        return dep is None or store.load(dep) is not None

    def report(t: Task, out: Mapping[str, Any]) -> None:
        nonlocal done
        done += 1
        vf, tf = out.get("val_frobenius_mae"), out.get("test_frobenius_mae")
        log(
            f"[{done}/{total}] {t.label()}  val Frob MAE {vf if vf is None else f'{vf:.4g}'}"
            f"  test {tf if tf is None else f'{tf:.4g}'}  ({out.get('epochs')} ep, {out.get('wall_time_s')} s)"
        )

    order = sorted(todo, key=lambda rid: _priority(todo[rid][0].spec))
    if workers <= 1:
        for rid in order:
            t, work = todo[rid]
            dep = t.spec.pretrain_id
            if dep and store.load(dep) is None:
                failed[rid] = f"run {dep} it starts from did not finish"
                continue
            try:
                out = _do_task(t.spec.to_dict(), t.final, work, str(store.root), min_train_steps,
                               eval_batch_size, data)
            except Exception as exc:  # keep going: the other runs are independent
                logger.exception("run %s failed", rid)
                failed[rid] = f"{type(exc).__name__}: {exc}"
                log(f"FAILED {t.label()}: {type(exc).__name__}: {exc}")
                continue
            report(t, out)
        return {"skipped": skipped, "executed": done, "failed": failed}

    if data_path is None:
        raise ValueError("execute_tasks with workers > 1 needs data_path")
    ctx = multiprocessing.get_context("spawn")
    pending = list(order)
    running: dict[cf.Future, str] = {}
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(str(data_path),)) as pool:
        while pending or running:
            for rid in list(pending):
                if len(running) >= workers:
                    break
                t, work = todo[rid]
                dep = t.spec.pretrain_id
                if dep and dep in failed:
                    failed[rid] = f"run {dep} it starts from failed"
                    pending.remove(rid)
                    continue
                if not ready(t):
                    continue
                fut = pool.submit(_do_task, t.spec.to_dict(), t.final, work, str(store.root),
                                  min_train_steps, eval_batch_size)
                running[fut] = rid
                pending.remove(rid)
            if not running:
                for rid in pending:  # nothing runnable: dependencies missing
                    failed[rid] = f"run {todo[rid][0].spec.pretrain_id} it starts from is missing"
                break
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                rid = running.pop(fut)
                t = todo[rid][0]
                try:
                    report(t, fut.result())
                except Exception as exc:  # noqa: BLE001 - any failure of a run is reported, the others go on
                    failed[rid] = f"{type(exc).__name__}: {exc}"
                    log(f"FAILED {t.label()}: {type(exc).__name__}: {exc}")
    return {"skipped": skipped, "executed": done, "failed": failed}


def import_runs(tasks: Sequence[Task], store: RunStore, sources: Sequence[str | os.PathLike[str]]) -> int:
    """Copy into ``store`` the runs of ``tasks`` that still need work here but finished in one of
    the ``sources`` results directories (same run id, hence the same definition); returns how
    many were copied."""
    count = 0
    others = [RunStore(s) for s in sources if Path(s).resolve() != store.root.resolve()]
    for t in tasks:
        if needs(t, store) is None:
            continue
        count += any(store.import_run(other, t.run_id, t.final) for other in others)
    return count


def prepare_features(tasks: Sequence[Task], data: StudyData, store: RunStore,
                     log: Callable[[str], None] = print) -> None:
    """Compute (once, in this process, with a progress bar) the cached trunk features of the
    ``foundation-frozen`` tasks that still need work, so that worker processes only read them."""
    todo = [t for t in tasks if t.spec.strategy == "foundation-frozen" and needs(t, store)]
    if not todo:
        return
    from irreptensor_ml.model import build_trunk
    from irreptensor_ml.transfer.runner import study_node_features

    seen: set[str] = set()
    for t in todo:
        trunk_cfg = dict(t.spec.train_config["model"]["trunk"])
        key = json.dumps(trunk_cfg, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        log(f"foundation trunk features of {len(data)} crystals ({trunk_cfg.get('foundation')}; cached in "
            f"{store.feature_cache_dir})")
        started = time.time()
        study_node_features(data, build_trunk(trunk_cfg), store.feature_cache_dir, progress=True)
        log(f"foundation features ready ({time.time() - started:.0f} s)")
