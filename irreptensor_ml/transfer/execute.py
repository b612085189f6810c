"""Execution of the transfer study's runs: what still needs work, and running it -- in this process
(``workers <= 1``) or on a Dask cluster (a local one of ``workers`` processes, or an existing one)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irreptensor_ml.transfer.plan import Task
from irreptensor_ml.transfer.runner import RunSpec
from irreptensor_ml.transfer.store import RunStore
from irreptensor_ml.transfer.studydata import StudyData

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

__all__ = ["dask_client", "execute_tasks", "import_runs", "needs", "prepare_features"]

#: thread-count variables that Dask's nanny sets (to 1) before it spawns a worker process
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from irreptensor_ml.train.trainer import LIGHTNING_NOISE

    for message in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=message)


def needs(task: Task, store: RunStore) -> str | None:
    """``"train"`` (train, and test if final), ``"test"`` (test only) or ``None`` (done)."""
    rec = store.load(task.run_id)
    if rec is None:
        return "train"
    part = task.spec.study_target if task.spec.part else None
    if task.final and ("test" not in rec or (part and part not in (rec.get("test_parts") or {}))):
        return "test" if store.model_path(task.run_id).is_file() else "train"
    return None


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


# ------------------------------------------------------------------------------------ one task

#: study data of this (worker) process, loaded once per data file: ``{(path, mtime, size): data}``
#: (the last one; a file rewritten in place is read again)
_WORKER_DATA: dict[tuple[str, int, int], StudyData] = {}
_WORKER_DATA_LOCK = threading.Lock()


def _worker_data(data_path: str) -> StudyData:
    """The study data in a worker process, read from ``data_path`` by its first task."""
    try:
        stat = os.stat(data_path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"study data file {data_path} not found on {socket.gethostname()} (the workers of a "
            "cluster must see the study's results_dir and data file: a shared file system)"
        ) from None
    key = (data_path, stat.st_mtime_ns, stat.st_size)
    with _WORKER_DATA_LOCK:
        data = _WORKER_DATA.get(key)
        if data is None:
            _WORKER_DATA.clear()
            data = _WORKER_DATA[key] = StudyData.load(data_path)
        return data


def _do_task(
    spec_dict: Mapping[str, Any], final: bool, work: str, results_dir: str, min_train_steps: int,
    eval_batch_size: int, data: StudyData | None = None, data_path: str | None = None,
) -> dict[str, Any]:
    """Execute one task (in a worker: ``data_path``, or in-process: ``data``); writes the store
    files; returns a summary."""
    from irreptensor_ml.transfer.runner import evaluate_test, execute_run

    _quiet()
    if data is None:
        if data_path is None:
            raise RuntimeError("_do_task needs the study data or the path of its file")
        data = _worker_data(data_path)
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


# ------------------------------------------------------------------------------------ Dask


@contextlib.contextmanager
def dask_client(workers: int, scheduler_address: str | None = None) -> Iterator[Client]:
    """A Dask client: of the scheduler at ``scheduler_address`` (a cluster started elsewhere, e.g.
    with dask-jobqueue), or of a new local cluster of ``workers`` single-threaded worker processes,
    closed (workers ended) on exit.

    Local workers get ``OMP_NUM_THREADS`` (MKL, OpenBLAS) of this process, or else
    ``cpu_count // workers`` (Dask's default is 1); a run's ``trainer.num_threads`` still wins.
    A worker process ends with this process even when it is killed (Dask's nanny watches it).
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - dask is in the ml extra
        raise ImportError("a study with workers > 1 or a scheduler_address needs Dask: "
                          "pip install 'dask[distributed]'") from exc
    if scheduler_address:
        try:
            client = Client(scheduler_address, set_as_default=False)
        except OSError as exc:  # no scheduler there (a timeout is an OSError too)
            raise ValueError(f"cannot connect to the Dask scheduler at {scheduler_address}: {exc}") from exc
        with client:
            yield client
        return
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    environ = {**dict(dask.config.get("distributed.nanny.pre-spawn-environ") or {}),
               **dict.fromkeys(_THREAD_ENV, threads)}
    saved = {k: os.environ.get(k) for k in (*environ, "PYTHONHASHSEED")}  # the nanny sets them here too
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster, Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class StudyStopped(SystemExit):
    """SIGTERM arrived while runs executed on Dask (exit status 143; finished runs are stored)."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into :class:`StudyStopped` (in the main thread, where SIGTERM has its default
    action), so that the cluster is closed on the way out instead of the process vanishing."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise StudyStopped(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _missing_files(paths: Sequence[str]) -> list[str]:
    """The ``paths`` this (worker) process cannot see."""
    return [p for p in paths if not os.path.exists(p)]


def _execute_on_dask(
    client: Client, order: Sequence[str], todo: Mapping[str, tuple[Task, str]], store: RunStore,
    data_path: Path, min_train_steps: int, eval_batch_size: int, failed: dict[str, str],
    report: Callable[[Task, Mapping[str, Any]], None], log: Callable[[str], None],
) -> None:
    """Submit each task once the run it starts from is stored (Dask priorities keep ``order``)."""
    from distributed import as_completed

    store.root.mkdir(parents=True, exist_ok=True)
    root, path = str(store.root.resolve()), str(Path(data_path).resolve())
    unseen = {w: m for w, m in client.run(_missing_files, [root, path]).items() if m}
    if unseen:
        raise ValueError(f"Dask workers do not see the study's files (a shared file system is needed): {unseen}")
    rank = {rid: len(order) - i for i, rid in enumerate(order)}  # higher runs first
    session = uuid.uuid4().hex[:8]
    finished: set[str] = set()  # stored in this session (the store may lag on a network file system)
    pending = list(order)
    running = as_completed(loop=client.loop)
    runs: dict[str, str] = {}  # future key -> run id

    def submit_ready() -> None:
        for rid in list(pending):
            t, work = todo[rid]
            dep = t.spec.pretrain_id
            if dep and dep in failed:
                failed[rid] = f"run {dep} it starts from failed"
                pending.remove(rid)
                continue
            if dep and dep not in finished and store.load(dep) is None:
                continue
            fut = client.submit(_do_task, t.spec.to_dict(), t.final, work, root, min_train_steps,
                                eval_batch_size, None, path, key=f"{rid}-{work}-{session}",
                                priority=rank[rid], pure=False)
            runs[fut.key] = rid
            running.add(fut)
            pending.remove(rid)

    submit_ready()
    for fut in running:
        rid = runs.pop(fut.key)
        t = todo[rid][0]
        try:
            out = fut.result()
        except Exception as exc:  # noqa: BLE001 - any failure of a run is reported, the others go on
            failed[rid] = f"{type(exc).__name__}: {exc}"
            log(f"FAILED {t.label()}: {type(exc).__name__}: {exc}")
        else:
            finished.add(rid)
            report(t, out)
        fut.release()
        submit_ready()
    for rid in pending:  # never runnable: dependencies missing
        failed[rid] = f"run {todo[rid][0].spec.pretrain_id} it starts from is missing"


# ------------------------------------------------------------------------------------ tasks


def execute_tasks(
    tasks: Sequence[Task],
    data: StudyData,
    store: RunStore,
    *,
    workers: int = 1,
    data_path: Path | None = None,
    scheduler_address: str | None = None,
    min_train_steps: int = 0,
    eval_batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the tasks that still need work (dependencies first); returns counts.

    ``workers <= 1`` without ``scheduler_address``: one after the other in this process.
    Otherwise on Dask (:func:`dask_client`): a local cluster of ``workers`` processes, or the
    scheduler at ``scheduler_address``; every worker reads the study data from ``data_path``
    once. A run that starts from another run (:attr:`RunSpec.pretrain_id`) is submitted when
    that one is stored.

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

    def report(t: Task, out: Mapping[str, Any]) -> None:
        nonlocal done
        done += 1
        vf, tf = out.get("val_frobenius_mae"), out.get("test_frobenius_mae")
        log(
            f"[{done}/{total}] {t.label()}  val Frob MAE {vf if vf is None else f'{vf:.4g}'}"
            f"  test {tf if tf is None else f'{tf:.4g}'}  ({out.get('epochs')} ep, {out.get('wall_time_s')} s)"
        )

    order = sorted(todo, key=lambda rid: _priority(todo[rid][0].spec))
    if workers <= 1 and not scheduler_address:
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

    if not todo:
        return {"skipped": skipped, "executed": 0, "failed": failed}
    if data_path is None:
        raise ValueError("execute_tasks on Dask (workers > 1 or a scheduler_address) needs data_path")
    with _sigterm_stops(), dask_client(workers, scheduler_address) as client:
        where = f"Dask scheduler {scheduler_address}" if scheduler_address else f"{workers} local Dask workers"
        log(f"executing {total} runs on {where}")
        try:
            _execute_on_dask(client, order, todo, store, data_path, min_train_steps, eval_batch_size,
                             failed, report, log)
        except StudyStopped:
            log(f"stopped by SIGTERM after {done} of {total} runs (finished runs are stored; a rerun resumes)")
            raise
    return {"skipped": skipped, "executed": done, "failed": failed}
