"""The transfer study: plan of runs, resumable run store, (parallel) execution, summary.

Layout of ``results_dir``::

    study_config.yaml              the resolved study config of the last invocation
    data/<fingerprint>.pt          the study data (weights-only; loaded by worker processes)
    runs/<run_id>.json             one record per finished run (spec, train info, val metrics,
                                   and -- for final runs -- test metrics)
    models/<run_id>.pt             best model of the run (weights-only, load_model format)
    features/foundation/*.pt       cached per-atom features of the foundation trunk (frozen runs)
    predictions/<run_id>.json      per-material test predictions of a final run
    summary.json, results.md, *.png  the report (see :mod:`.report`)

A run's id is a hash of its full definition (:meth:`RunSpec.identity`: strategy, target,
fraction, seed, resolved training config, trunk learning-rate scale, the pretraining run it
starts from, the data fingerprint and a code version). A rerun of the study recomputes the plan,
finds the records already stored and skips those runs, so an interrupted study resumes where it
stopped -- also on another machine, since execution-only settings (accelerator, threads) are not
part of the id. Changing any setting of a run gives it a new id (it is redone; old records are
left alone and ignored).

Phases of :func:`run_study`:

0. runs already finished in one of the ``reuse_runs_from`` directories (same run id) are copied
   into this store; if ``foundation-frozen`` runs are to train, the foundation trunk's features
   of every crystal are computed once (progress bar) and cached under ``features/``;
1. pretraining runs (elastic, one per ``pretrain.seeds``), test-evaluated once (the elastic
   model's own metrics) -- skipped when the pretraining property is itself a target (then no
   strategy may need the pretrained trunk, and its scratch runs measure the same thing);
2. if ``tuning.candidates`` is set: every candidate of every strategy and target at
   ``tuning.fraction`` for ``tuning.seeds`` (validation only); the candidate with the lowest
   mean validation Frobenius MAE is chosen per (strategy, target) -- the same number of candidates
   for every strategy;
3. final runs: every strategy x target x fraction x seed with the chosen settings, each
   evaluated ONCE on the test set (a final run equal to a tuning run reuses it; a part target
   such as ``dielectric_electronic`` reuses the runs of its property when their settings agree,
   see :mod:`.runner`);
4. statistics and report (:mod:`.stats`, :mod:`.report`).

With ``workers > 1`` runs execute in that many spawned processes (each loads the study data
file once); runs that need a pretrained trunk wait for their pretraining run, and runs of a
strategy with ``start_from`` for the run they continue.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import json
import logging
import multiprocessing
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from irreptensor_ml.atomic import atomic_write_text, atomic_writer
from irreptensor_ml.train.config import load_config, validate_config
from irreptensor_ml.transfer.presets import _PRETRAINED, flatten_overrides, set_dotted, strategies_for
from irreptensor_ml.transfer.runner import RunSpec, parts_heads
from irreptensor_ml.transfer.strategies import foundation_model_config, get_strategy, heads_for
from irreptensor_ml.transfer.studydata import PROPERTIES, StudyData, target_property

logger = logging.getLogger(__name__)

__all__ = ["RunStore", "StudyError", "Task", "import_runs", "load_study_data", "plan_pretrain", "plan_runs",
           "prepare_features", "pretraining_needed", "run_study", "execute_tasks", "selection_from_records"]

#: data-config keys that only affect how the data are read, not what they are
_DATA_EXECUTION_KEYS = ("cache_dir", "progress", "num_workers", "batch_size", "dtype", "data_root")


class StudyError(RuntimeError):
    """Some runs of the study failed (the others are stored; a rerun retries the failed ones)."""


# ------------------------------------------------------------------------------------ store


class RunStore:
    """Files of finished runs under ``results_dir`` (see the module doc for the layout)."""

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        self.root = Path(results_dir)

    @property
    def feature_cache_dir(self) -> Path:
        """Cache directory of the foundation trunk's features (``<root>/features``)."""
        return self.root / "features"

    def record_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def model_path(self, run_id: str) -> Path:
        return self.root / "models" / f"{run_id}.pt"

    def predictions_path(self, run_id: str) -> Path:
        return self.root / "predictions" / f"{run_id}.json"

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id`` or ``None`` (missing or unreadable)."""
        path = self.record_path(run_id)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("status") == "finished" else None

    def load_predictions(self, run_id: str) -> dict[str, Any]:
        """Per-material test predictions of a final run (``ValueError`` if missing)."""
        path = self.predictions_path(run_id)
        if not path.is_file():
            raise ValueError(f"no test predictions stored for run {run_id} ({path})")
        return json.loads(path.read_text())

    def import_run(self, other: "RunStore", run_id: str, final: bool) -> bool:
        """Copy the files of ``run_id`` from ``other`` if it finished there (with its test
        metrics and predictions if ``final``) and is not stored here; returns whether it did."""
        import shutil

        rec = other.load(run_id)
        if rec is None or self.load(run_id) is not None or not other.model_path(run_id).is_file():
            return False
        if final and ("test" not in rec or not other.predictions_path(run_id).is_file()):
            return False
        files = [(other.model_path(run_id), self.model_path(run_id))]
        if other.predictions_path(run_id).is_file():
            files.append((other.predictions_path(run_id), self.predictions_path(run_id)))
        for src, dst in files:
            with open(src, "rb") as fin, atomic_writer(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        self.save({**rec, "imported_from": str(other.root)})  # the record last: it marks the run done
        return True

    def save(self, record: Mapping[str, Any]) -> Path:
        """Write a run record atomically."""
        return _atomic_json(self.record_path(str(record["run_id"])), record)

    def save_test(self, run_id: str, metrics: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
        """Add test metrics to the record and write the per-material predictions (a model with
        parts: their metrics, ``predictions["parts"][key]["metrics"]``, go to ``test_parts``)."""
        rec = self.load(run_id)
        if rec is None:
            raise ValueError(f"run {run_id} has no stored record; train it first")
        _atomic_json(self.predictions_path(run_id), predictions)
        rec["test"] = dict(metrics)
        parts = predictions.get("parts") or {}
        if parts:
            rec["test_parts"] = {k: dict(v.get("metrics") or {}) for k, v in parts.items()}
        rec["test_evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save(rec)


def _atomic_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False, default=str) + "\n")


# ------------------------------------------------------------------------------------ data


def load_study_data(config: Mapping[str, Any], from_cache: str | os.PathLike[str] | None = None) -> StudyData:
    """Study data from an exported cache file, or built from the data files (needs pymatgen).

    A cache whose data settings differ from ``config["data"]`` in anything that changes the data
    (cutoff, sources, split, limit, symmetry check ...) is refused with a ``ValueError`` naming
    the differing keys.
    """
    if from_cache is None:
        return StudyData.build(config["data"])
    data = StudyData.load(from_cache)
    from irreptensor_ml.data.datamodule import DataConfig

    wanted = DataConfig.from_dict(
        {**config["data"], "properties": list(PROPERTIES), "train_fraction": 1.0}
    ).to_dict()
    have = dict(data.data_config)
    diff = sorted(
        k for k in set(wanted) | set(have)
        if k not in _DATA_EXECUTION_KEYS and k != "properties" and wanted.get(k) != have.get(k)
    )
    if diff:
        raise ValueError(
            f"cache {str(from_cache)!r} was built with other data settings: "
            + ", ".join(f"{k}={have.get(k)!r} (config: {wanted.get(k)!r})" for k in diff)
        )
    return data


def data_file(results_dir: Path, data: StudyData, from_cache: str | os.PathLike[str] | None) -> Path:
    """Path of a weights-only data file for worker processes (writes one if needed)."""
    if from_cache is not None:
        return Path(from_cache)
    path = results_dir / "data" / f"{data.fingerprint[:16]}.pt"
    if not path.is_file():
        data.save(path)
    return path


# ------------------------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a run, and whether it is final (then evaluated once on the test set)."""

    spec: RunSpec
    final: bool
    phase: str

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    def label(self) -> str:
        s = self.spec
        name = "pretrain" if s.kind == "pretrain" else s.strategy
        return f"{name:9s} {s.study_target:13s} f={s.fraction:<5g} seed={s.seed} cand={s.candidate}"


def base_train_config(config: Mapping[str, Any], data: StudyData) -> dict[str, Any]:
    """Training config shared by all runs: ``configs/default.yaml`` <- ``config["train"]``, with
    the data section of the study data (batch size and dtype from ``config["data"]``)."""
    user = copy.deepcopy(dict(config["train"]))
    data_cfg = dict(data.data_config)
    for key in ("batch_size", "dtype"):
        if key in config["data"]:
            data_cfg[key] = config["data"][key]
    data_cfg["properties"] = list(PROPERTIES)
    user["data"] = data_cfg
    return load_config(user)


def _apply(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int) -> tuple[dict[str, Any], float]:
    out = copy.deepcopy(dict(cfg))
    scale = 1.0
    for key, value in flatten_overrides(overrides).items():
        if key == "trunk_lr_scale":
            scale = float(value)
        else:
            set_dotted(out, key, value)
    out["seed"] = int(seed)
    validate_config(out)
    return out, scale


def pretrain_seed(config: Mapping[str, Any], seed: int) -> int:
    """Seed of the pretraining run used by study seed ``seed``: ``pretrain.seeds[seed % n]``."""
    seeds = list(config["pretrain"]["seeds"])
    return int(seeds[int(seed) % len(seeds)])


def pretraining_needed(config: Mapping[str, Any]) -> bool:
    """Whether the study runs its pretraining phase: unless the pretraining property is itself a
    target and no other target has a strategy that reuses the pretrained trunk (validation
    guarantees that the pretraining property's own strategies do not)."""
    pre = config["pretrain"]["property"]
    return pre not in config["targets"] or any(
        s in _PRETRAINED for t in config["targets"] if t != pre for s in strategies_for(config, t)
    )


def plan_pretrain(config: Mapping[str, Any], data: StudyData) -> dict[int, RunSpec]:
    """``{pretrain seed: RunSpec}`` of the pretraining runs (planned even where
    :func:`pretraining_needed` is false; :func:`run_study` then does not execute them)."""
    base = base_train_config(config, data)
    out = {}
    for s in config["pretrain"]["seeds"]:
        cfg, _ = _apply(base, config["pretrain"]["overrides"] or {}, s)
        out[int(s)] = RunSpec(
            "pretrain", "scratch", config["pretrain"]["property"], 1.0, int(s), cfg,
            data_fingerprint=data.fingerprint,
        )
    return out


def candidates(config: Mapping[str, Any], strategy: str) -> list[dict[str, Any]]:
    """Tuning candidates of ``strategy`` (each merged over ``strategy_settings``); ``[{}]``-like
    single candidate when the study does no tuning."""
    fixed = dict((config["strategy_settings"] or {}).get(strategy) or {})
    cands = (config["tuning"]["candidates"] or {}).get(strategy) or [{}]
    return [{**fixed, **dict(c)} for c in cands]


def start_from(config: Mapping[str, Any], strategy: str) -> str | None:
    """The strategy whose runs ``strategy``'s runs start from (``strategy_settings`` key
    ``start_from``), or ``None``."""
    return dict((config["strategy_settings"] or {}).get(strategy) or {}).get("start_from")


def make_spec(
    config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec], strategy: str,
    target: str, fraction: float, seed: int, candidate: int,
    selection: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> RunSpec:
    """The RunSpec of one transfer run with tuning candidate number ``candidate``.

    A foundation strategy's model section is the study's ``foundation`` trunk and head
    (:func:`~irreptensor_ml.transfer.strategies.foundation_model_config`), before the
    candidate's overrides; the other strategies' specs do not depend on ``foundation``.
    A strategy with ``start_from`` starts from the run of that strategy with the same target,
    fraction and seed and its ``selection``-chosen candidate (candidate 0 without a selection);
    its ``min_train_steps`` setting replaces the study's for its runs.

    ``target`` is a study target: a property, or a part (``dielectric_electronic``), whose run is
    its property's run (:attr:`RunSpec.part` set). The target's ``target_settings`` apply before
    the candidate's overrides; the head of every property with a part among the study's targets
    predicts the parts (``model.heads.<property>.parts``), so the runs of a property and of its
    part are one run when their settings agree."""
    strat = get_strategy(strategy)
    prop, part = target_property(target)
    over = dict(candidates(config, strategy)[candidate])
    source = over.pop("start_from", None)
    min_steps = over.pop("min_train_steps", None)
    base = base_train_config(config, data)
    if strat.foundation:
        base["model"] = foundation_model_config(base["model"], config["foundation"], prop)
    for key, value in flatten_overrides((config.get("target_settings") or {}).get(target) or {}).items():
        set_dotted(base, key, value)
    heads = heads_for(strat, prop, list(PROPERTIES))
    with_parts = {target_property(t)[0] for t in config["targets"] if target_property(t)[1] is not None}
    for p in heads:
        if p in with_parts:
            set_dotted(base, f"model.heads.{p}.parts", True)
    cfg, scale = _apply(base, over, seed)
    parts_fp = data.parts_fingerprint if set(heads) & set(parts_heads(cfg)) else ""
    if set(heads) & set(parts_heads(cfg)) and not parts_fp:
        raise ValueError(f"target {target!r}: the {strategy} runs' head(s) {sorted(set(heads) & set(parts_heads(cfg)))} "
                         "predict parts, but the study data hold no part targets (a cache exported before "
                         "the parts were kept? export it again with --export-cache)")
    pre_id = pretrain[pretrain_seed(config, seed)].run_id if strat.pretrained_trunk else None
    if source is not None:
        k = int(selection[target][source]["chosen"]) if selection else 0
        pre_id = make_spec(config, data, pretrain, source, target, fraction, seed, k, selection).run_id
    return RunSpec(
        "transfer", strategy, prop, float(fraction), int(seed), cfg, trunk_lr_scale=scale,
        pretrain_id=pre_id, data_fingerprint=data.fingerprint, candidate=int(candidate),
        min_train_steps=None if min_steps is None else int(min_steps), part=part,
        parts_fingerprint=parts_fp,
    )


def tuning_needed(config: Mapping[str, Any]) -> bool:
    """True if some strategy has more than one candidate."""
    return any(len(candidates(config, s)) > 1 for t in config["targets"] for s in strategies_for(config, t))


def plan_trials(config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec]) -> list[RunSpec]:
    """Tuning runs: each candidate x strategy x target at ``tuning.fraction`` x ``tuning.seeds``
    (not for a strategy with ``start_from``: it has one candidate and continues the tuned runs of
    its source)."""
    t = config["tuning"]
    return [
        make_spec(config, data, pretrain, strat, target, float(t["fraction"]), int(seed), k)
        for target in config["targets"]
        for strat in strategies_for(config, target)
        if start_from(config, strat) is None
        for k in range(len(candidates(config, strat)))
        for seed in t["seeds"]
    ]


def selection_from_records(
    config: Mapping[str, Any], trials: Sequence[RunSpec], store: RunStore
) -> dict[str, dict[str, dict[str, Any]]]:
    """Chosen candidate per (target, strategy): lowest mean validation Frobenius MAE.

    Returns ``{target: {strategy: {"chosen": k, "val_frobenius_mae": [mean per candidate],
    "overrides": [...]}}}``. Without tuning every choice is candidate 0. A part target is scored
    on the validation metrics of its part (the record's ``val_parts``).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in config["targets"]:
        out[target] = {}
        for strat in strategies_for(config, target):
            cands = candidates(config, strat)
            scores: list[float | None] = []
            for k in range(len(cands)):
                vals = []
                for spec in trials:
                    if spec.study_target == target and spec.strategy == strat and spec.candidate == k:
                        rec = store.load(spec.run_id)
                        if rec is None:
                            raise ValueError(f"tuning run {spec.run_id} has not finished")
                        v = val_metrics(rec, target).get("frobenius_mae")
                        vals.append(float("inf") if v is None else float(v))
                scores.append(sum(vals) / len(vals) if vals else None)
            valid = [(s, k) for k, s in enumerate(scores) if s is not None]
            chosen = min(valid)[1] if valid else 0
            out[target][strat] = {"chosen": chosen, "val_frobenius_mae": scores, "overrides": cands}
    return out


def val_metrics(record: Mapping[str, Any], target: str) -> dict[str, Any]:
    """A run record's validation metrics of a study target (a part: from ``val_parts``)."""
    if target_property(target)[1] is None:
        return dict(record.get("val") or {})
    return dict((record.get("val_parts") or {}).get(target) or {})


def plan_runs(
    config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec],
    selection: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[RunSpec]:
    """Final runs: strategy x target x fraction x seed with the selected candidates (the
    strategies of each target, :func:`~irreptensor_ml.transfer.presets.strategies_for`). A run
    shared by a property and its part target is listed for each (same run id)."""
    out = []
    for target in config["targets"]:
        for strat in strategies_for(config, target):
            k = int(selection[target][strat]["chosen"]) if selection else 0
            for f in config["fractions"]:
                for seed in config["seeds"]:
                    out.append(make_spec(config, data, pretrain, strat, target, float(f), int(seed), k,
                                         selection))
    return out


# ------------------------------------------------------------------------------------ execution

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
                except Exception as exc:
                    failed[rid] = f"{type(exc).__name__}: {exc}"
                    log(f"FAILED {t.label()}: {type(exc).__name__}: {exc}")
    return {"skipped": skipped, "executed": done, "failed": failed}


# ------------------------------------------------------------------------------------ study


def run_study(
    config: Mapping[str, Any],
    *,
    from_cache: str | os.PathLike[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    report: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the whole study and write its report; returns the summary dict.

    Args:
        config: validated study config (:func:`~irreptensor_ml.transfer.presets.load_study_config`).
        from_cache: exported study-data file (no pymatgen needed); default: build from the data.
        results_dir: overrides ``config["results_dir"]``.
        workers: overrides ``config["workers"]``.
        dry_run: only print the plan (how many runs are stored / to do) and return it.
        report_only: train nothing; summarize the stored runs (:class:`StudyError` if any
            planned run is missing).
        report: write ``summary.json``, ``results.md`` and plots at the end.

    Raises :class:`StudyError` (after storing everything that finished) if runs failed.
    """
    started = time.time()
    cfg = copy.deepcopy(dict(config))
    root = Path(results_dir or cfg["results_dir"])
    cfg["results_dir"] = str(root)
    workers = int(workers or cfg["workers"])
    cfg["workers"] = workers
    store = RunStore(root)
    data = load_study_data(cfg, from_cache)
    data.check_union_split()
    pretrain = plan_pretrain(cfg, data)
    if not pretraining_needed(cfg):
        pretrain = {}
    pre_tasks = [Task(s, True, "pretrain") for s in pretrain.values()]
    trials = plan_trials(cfg, data, pretrain) if tuning_needed(cfg) else []
    trial_tasks = [Task(s, False, "tuning") for s in trials]

    if dry_run:
        finals = plan_runs(cfg, data, pretrain) if not trials else []
        tasks = list({t.run_id: t for t in pre_tasks + trial_tasks + [Task(s, True, "final") for s in finals]}.values())
        todo = [t for t in tasks if needs(t, store)]
        n_final = sum(len(strategies_for(cfg, t)) for t in cfg["targets"]) * len(cfg["fractions"]) * len(cfg["seeds"])
        plan = {
            "results_dir": str(root), "data_fingerprint": data.fingerprint, "counts": data.counts(),
            "pretrain_runs": len(pre_tasks), "tuning_runs": len({s.run_id for s in trials}),
            "final_runs": len({s.run_id for s in finals}) if not trials else f"after tuning (at most {n_final})",
            "to_do_now": len(todo), "stored": len(tasks) - len(todo),
        }
        log(json.dumps(plan, indent=1))
        return plan

    root.mkdir(parents=True, exist_ok=True)
    import yaml

    (root / "study_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    data_path = data_file(root, data, from_cache) if workers > 1 and not report_only else None
    counts = data.counts()
    log(f"study {cfg['name']!r}: data {data.fingerprint[:12]} {counts}; results in {root}; workers={workers}")
    failures: dict[str, str] = {}
    common = dict(workers=workers, data_path=data_path, min_train_steps=int(cfg["min_train_steps"]),
                  eval_batch_size=int(cfg["eval_batch_size"]), log=log)
    selection = None

    def execute(tasks: list[Task]) -> None:
        imported = import_runs(tasks, store, cfg.get("reuse_runs_from") or [])
        if imported:
            log(f"{imported} finished run(s) copied from {cfg['reuse_runs_from']}")
        if report_only:
            missing = {t.run_id: "not stored" for t in tasks if needs(t, store)}
            if missing:
                raise StudyError(_failure_text(missing))
            return
        prepare_features(tasks, data, store, log)
        res = execute_tasks(tasks, data, store, **common)
        failures.update(res["failed"])
        if failures:
            raise StudyError(_failure_text(failures))

    if trials:
        log(f"phase 1: {len(pre_tasks)} pretraining + {len(trial_tasks)} tuning runs")
        execute(pre_tasks + trial_tasks)
        selection = selection_from_records(cfg, trials, store)
    finals = plan_runs(cfg, data, pretrain, selection)
    final_tasks = [Task(s, True, "final") for s in finals]
    log(f"final phase: {len(pre_tasks)} pretraining + {len(final_tasks)} final runs")
    execute(pre_tasks + final_tasks)
    if selection is None:
        selection = selection_from_records(cfg, [], store)
    from irreptensor_ml.transfer.report import summarize, write_report

    summary = summarize(cfg, data, store, list(pretrain.values()), finals, selection,
                        session_elapsed_s=time.time() - started)
    if report:
        files = write_report(summary, root, store)
        log(f"report written: {', '.join(str(f) for f in files)}")
    return summary


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


def _failure_text(failures: Mapping[str, str]) -> str:
    lines = [f"{len(failures)} run(s) failed (finished runs are stored; rerun to retry):"]
    lines += [f"  {rid}: {err}" for rid, err in sorted(failures.items())]
    return "\n".join(lines)
