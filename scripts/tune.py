"""Tune one property's model with Optuna on the validation split only (issue "models that learn").

Each trial trains ``irreptensor_ml/configs/learn.yaml`` with sampled overrides (trunk width and
depth, angular resolution, cutoff, learning rate, epoch budget, batch size, loss and, where it
is a choice, extra training data, element descriptors in the species embedding) and is scored on the **MP validation materials**
(``SELECT_ON``; records of other sources, used as extra training data, are left out of the
score so that every trial is judged on the same materials).  The test split is never looked at.

The study lives in ``<out>/<property>/study.db`` (SQLite), so an interrupted invocation resumes
(trials that were running when it died are marked failed and not counted); every trial's run,
metrics and record are in ``<out>/<property>/trial-<n>/`` (checkpoints deleted).  The budget is
wall time (``--timeout``) and/or a trial count; ``<out>/<property>/best.json`` holds the best
trial's overrides, which ``scripts/learn_models.py --tuned`` trains on three seeds.

    pip install -e ".[ml,tune]"
    python scripts/tune.py dielectric --timeout 3600 --out results/tune
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

BASE = "irreptensor_ml/configs/learn.yaml"

#: validation metric minimised per property (lower is better), on MP materials only.
SELECT_ON = {"dielectric": "rel_frobenius", "piezoelectric": "rel_frobenius", "elastic": "frobenius_mae"}

#: materials a run is scored on: the MP ones for the dielectric and piezoelectric tensors (the
#: other sources are extra training data), every test material for the elastic tensor (the MP,
#: MatTen and ABO3 records of the elastic benchmark, as in the MatTen comparison).
SCORED = {"dielectric": "mp", "piezoelectric": "mp", "elastic": "all"}

#: output transform per property: physically admissible outputs are required for the dielectric
#: (eigenvalues >= 1) and elastic (positive definite) tensors, so ``exp`` is fixed there.
OUTPUT = {"dielectric": "exp", "elastic": "exp", "piezoelectric": None}

#: losses the sampler chooses from.
LOSSES = {
    "dielectric": ["relative", "log"],
    "piezoelectric": ["relative", "frobenius", "smooth_l1"],
    "elastic": ["frobenius", "relative"],
}


def is_mp(material_id: str) -> bool:
    """Whether a prediction row is an MP material (ids ``mp-…``)."""
    return str(material_id).split(":")[-1].startswith("mp-")


def trunk_overrides(width: int, depth: int, lmax_sh: int, message_lmax: int) -> list[str]:
    """Trunk overrides of one (width, depth, angular resolution) point; width = scalar channels."""
    v, t = max(2, width // 4), max(2, width // 8)
    hidden = f"{width}x0e+{v}x1o+{v}x2e+{t}x2o+{t}x3o+{t}x4e"
    return [
        f"model.trunk.embedding_dim={width}",
        f"model.trunk.irreps_hidden={hidden}",
        f"model.trunk.num_layers={depth}",
        f"model.trunk.lmax_sh={lmax_sh}",
        f"model.trunk.message_lmax={message_lmax}",
        f"model.trunk.radial_hidden=[{width}]",
    ]


def sample_overrides(trial: Any, prop: str) -> list[str]:
    """The config overrides of one trial (the search space)."""
    width = trial.suggest_categorical("width", [16, 24, 32, 48])
    depth = trial.suggest_int("depth", 2, 3)  # one layer cannot reach l = 3, 4 from scalar inputs
    # (lmax of the edge harmonics, lmax of the node features in messages): pairs that reach l = 4
    angular = trial.suggest_categorical("angular", ["l3m2", "l3m1", "l2m2"])
    lmax_sh, message_lmax = int(angular[1]), int(angular[3])
    cutoff = trial.suggest_categorical("cutoff", [3.5, 4.0, 5.0])
    lr = trial.suggest_float("lr", 1e-3, 1.5e-2, log=True)
    epochs = trial.suggest_categorical("epochs", [40, 80, 120])
    batch = trial.suggest_categorical("batch_size", [8, 16, 32])
    loss = trial.suggest_categorical("loss", LOSSES[prop])
    sources = trial.suggest_categorical("sources", ["all", "mp"])
    elements = trial.suggest_categorical("element_features", [True, False])
    out = [
        f"data.properties=[{prop}]",
        f"data.cutoff={cutoff}",
        f"data.batch_size={batch}",
        f"data.sources=[{sources}]",
        f"optim.lr={lr:.6g}",
        f"trainer.max_epochs={epochs}",
        f"loss.type={loss}",
        *trunk_overrides(width, depth, lmax_sh, message_lmax),
    ]
    if elements:
        out.append("model.trunk.element_features=true")
    if OUTPUT[prop]:
        out.append(f"model.outputs={{{prop}: {OUTPUT[prop]}}}")
    if prop == "dielectric":
        parts = trial.suggest_categorical("parts", [True, False])
        if parts:
            out.append("model.heads={dielectric: {parts: true}}")
    return out


def scored_metrics(run_dir: Path, prop: str, split: str, plots: bool = False) -> dict[str, Any]:
    """Metrics of ``prop`` on the scored materials (:data:`SCORED`) of ``split`` (all metric names
    of :func:`irreptensor_ml.evaluate.compute_metrics`, parts included)."""
    from irreptensor_ml.evaluate import compute_metrics, evaluate_run

    res = evaluate_run(run_dir, split=split, out_dir=run_dir.parent / f"eval_{split}", plots=plots,
                       data_overrides={"progress": False})
    keep = (lambda m: True) if SCORED[prop] == "all" else is_mp
    subset = {name: d.subset([keep(m) for m in d.material_ids]) for name, d in res.predictions.items()}
    return {name: {k: float(v) for k, v in m.items()} for name, m in compute_metrics(subset).items()}


def objective_factory(prop: str, out: Path):
    def objective(trial: Any) -> float:
        import torch

        from irreptensor_ml.train import fit

        torch.set_num_threads(1)
        overrides = [*sample_overrides(trial, prop), f"seed={trial.number % 3}"]
        trial_dir = out / f"trial-{trial.number:03d}"
        started = time.time()
        fit(BASE, trial_dir / "run", overrides)
        wall = time.time() - started
        val = scored_metrics(trial_dir / "run", prop, "val")
        info = json.loads((trial_dir / "run" / "run_info.json").read_text())
        epochs = int(info.get("epochs_completed") or 0) + 1
        record = {"number": trial.number, "params": trial.params, "overrides": overrides, "val": val,
                  "train_wall_s": round(wall, 1), "epochs": epochs, "s_per_epoch": round(wall / epochs, 2),
                  "num_parameters": info["model"]["num_parameters"]}
        (trial_dir / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        shutil.rmtree(trial_dir / "run" / "checkpoints", ignore_errors=True)
        for key in ("num_parameters", "s_per_epoch", "epochs"):
            trial.set_user_attr(key, record[key])
        score = val[prop][SELECT_ON[prop]]
        if not np.isfinite(score):
            raise RuntimeError(f"trial {trial.number}: non-finite validation score")
        return float(score)

    return objective


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("property", choices=sorted(SELECT_ON))
    ap.add_argument("--out", default="results/tune")
    ap.add_argument("--timeout", type=float, default=2 * 3600, help="wall-time budget of this invocation, s")
    ap.add_argument("--n-trials", type=int, default=None, help="stop after this many finished trials in total")
    ap.add_argument("--enqueue", action="append", default=[], metavar="JSON",
                    help="parameters of a trial to run first (JSON object; keys left out are sampled); repeatable")
    args = ap.parse_args(argv)
    enqueued = []
    for text in args.enqueue:
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            ap.error(f"--enqueue {text!r}: not JSON ({exc})")
        if not isinstance(params, dict):
            ap.error(f"--enqueue {text!r}: expected a JSON object of trial parameters")
        enqueued.append(params)
    import optuna  # the `tune` extra: pip install -e ".[tune]"
    out = Path(args.out) / args.property
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name=args.property, storage=storage, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=6),
                                load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # its process died mid-trial
    if not study.trials:  # start from the configuration of scripts/learn_models.py
        base = {"width": 16, "depth": 2, "angular": "l3m2", "cutoff": 4.0, "lr": 0.005,
                "epochs": 80, "batch_size": 16, "loss": LOSSES[args.property][0], "sources": "all",
                "element_features": False}
        if args.property == "dielectric":
            base["parts"] = False
        study.enqueue_trial(base)
        study.enqueue_trial({**base, "element_features": True})
    for params in enqueued:
        study.enqueue_trial(params)
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    n_trials = None if args.n_trials is None else max(0, args.n_trials - done)
    study.optimize(objective_factory(args.property, out), timeout=args.timeout, n_trials=n_trials,
                   catch=(RuntimeError, ValueError))
    best = study.best_trial
    summary = {"property": args.property, "select_on": SELECT_ON[args.property], "best_value": best.value,
               "best_number": best.number, "best_params": best.params,
               "overrides": json.loads((out / f"trial-{best.number:03d}" / "record.json").read_text())["overrides"],
               "n_complete": len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]),
               "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                           **t.user_attrs} for t in study.trials]}
    (out / "best.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("best_value", "best_number", "best_params", "n_complete")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
