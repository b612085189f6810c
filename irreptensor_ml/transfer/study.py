"""The transfer study: :func:`run_study` runs (or resumes) the plan of runs and writes the report.

The parts: :mod:`.plan` (which runs), :mod:`.store` (the files of finished runs, the study data),
:mod:`.execute` (running them, in this process or on Dask), :mod:`.report` (summary and report).

Layout of ``results_dir``::

    study_config.yaml              the resolved study config of the last invocation
    data/<fingerprint>.pt          the study data (weights-only; loaded by the Dask workers)
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
stopped -- also on another machine, since execution-only settings (accelerator, threads,
``workers``, ``scheduler_address``) are not part of the id. Changing any setting of a run gives
it a new id (it is redone; old records are left alone and ignored).

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

With ``workers > 1`` the runs execute on a local Dask cluster of that many worker processes, with
``scheduler_address`` on an existing Dask cluster (e.g. Slurm or PBS jobs started by
dask-jobqueue; its workers must see ``results_dir``); each worker loads the study data file once.
Runs that need a pretrained trunk wait for their pretraining run, and runs of a strategy with
``start_from`` for the run they continue (:func:`~irreptensor_ml.transfer.execute.execute_tasks`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from irreptensor_ml.transfer.execute import (
    execute_tasks,
    import_runs,
    needs,
    prepare_features,
)
from irreptensor_ml.transfer.plan import (
    Task,
    plan_pretrain,
    plan_runs,
    plan_trials,
    pretraining_needed,
    selection_from_records,
    tuning_needed,
)
from irreptensor_ml.transfer.presets import strategies_for
from irreptensor_ml.transfer.store import RunStore, data_file, load_study_data

#: re-exported for code that imported them from here before the split into plan / store / execute
__all__ = [
    "RunStore", "StudyError", "Task", "execute_tasks", "import_runs", "load_study_data", "plan_pretrain",
    "plan_runs", "prepare_features", "pretraining_needed", "run_study", "selection_from_records",
]


class StudyError(RuntimeError):
    """Some runs of the study failed (the others are stored; a rerun retries the failed ones)."""


def run_study(
    config: Mapping[str, Any],
    *,
    from_cache: str | os.PathLike[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler_address: str | None = None,
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
        workers: overrides ``config["workers"]`` (``> 1``: a local Dask cluster of that many
            worker processes).
        scheduler_address: overrides ``config["scheduler_address"]``: run on the Dask cluster of
            that scheduler (e.g. ``tcp://node12:8786``) instead.
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
    scheduler_address = scheduler_address or cfg.get("scheduler_address") or None
    cfg["scheduler_address"] = scheduler_address
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
    on_dask = (workers > 1 or scheduler_address is not None) and not report_only
    data_path = data_file(root, data, from_cache) if on_dask else None
    counts = data.counts()
    engine = f"scheduler {scheduler_address}" if scheduler_address else f"workers={workers}"
    log(f"study {cfg['name']!r}: data {data.fingerprint[:12]} {counts}; results in {root}; {engine}")
    failures: dict[str, str] = {}
    common: dict[str, Any] = {
        "workers": workers, "data_path": data_path, "scheduler_address": scheduler_address,
        "min_train_steps": int(cfg["min_train_steps"]), "eval_batch_size": int(cfg["eval_batch_size"]), "log": log,
    }
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


def _failure_text(failures: Mapping[str, str]) -> str:
    lines = [f"{len(failures)} run(s) failed (finished runs are stored; rerun to retry):"]
    lines += [f"  {rid}: {err}" for rid, err in sorted(failures.items())]
    return "\n".join(lines)
