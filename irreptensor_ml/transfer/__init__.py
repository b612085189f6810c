"""Transfer-learning study: pretrain a trunk on elastic tensors, reuse it for dielectric and
piezoelectric tensors, and measure honestly whether (and how) that helps.

Modules:

* :mod:`.studydata` -- :class:`StudyData`, all graphs/targets/split of the union split in one
  weights-only file (``--export-cache`` / ``--from-cache``; no pymatgen needed to load it);
* :mod:`.strategies` -- scratch, frozen, finetune, multitask, control (:data:`STRATEGIES`);
* :mod:`.runner` -- one run: data selection, training (Lightning), validation/test evaluation;
* :mod:`.study` -- :func:`run_study`: the whole study, resumable, and its report;
* :mod:`.plan` -- the runs of the study (:class:`~.plan.Task`, pretraining / tuning / final specs);
* :mod:`.store` -- resumable store of finished runs (``runs/<run_id>.json``), the study data file;
* :mod:`.execute` -- execution of the runs, in-process or on Dask (a local cluster or a
  scheduler address);
* :mod:`.stats` -- mean ± std over seeds, paired bootstrap intervals against scratch;
* :mod:`.report` -- ``summary.json``, ``results.md``, learning-curve and parity plots;
* :mod:`.ship` -- export of the best model per property with a model card;
* :mod:`.presets` -- study config defaults, ``quick`` / ``full`` presets
  (``irreptensor_ml/configs/transfer_{quick,full}.yaml``);
* :mod:`.cli` -- ``irreptensor-ml transfer`` (:func:`main_transfer`).

Importing this package is cheap; the heavy modules load on first attribute access. Nothing here
imports pymatgen at module level, so a study runs from an exported cache (``--from-cache``) on a
machine without pymatgen.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StudyData": "studydata",
    "STRATEGIES": "strategies",
    "build_module": "strategies",
    "RunSpec": "runner",
    "execute_run": "runner",
    "run_study": "study",
    "RunStore": "store",
    "StudyError": "study",
    "paired_bootstrap": "stats",
    "mean_std": "stats",
    "load_study_config": "presets",
    "export_models": "ship",
    "main_transfer": "cli",
}

__all__ = [  # the names of _LAZY
    "STRATEGIES",
    "RunSpec",
    "RunStore",
    "StudyData",
    "StudyError",
    "build_module",
    "execute_run",
    "export_models",
    "load_study_config",
    "main_transfer",
    "mean_std",
    "paired_bootstrap",
    "run_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"irreptensor_ml.transfer.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'irreptensor_ml.transfer' has no attribute {name!r}")
