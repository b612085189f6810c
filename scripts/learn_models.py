"""Train the per-property models of issue "models that learn": candidates x seeds, chosen on validation.

For each property, every candidate setting (output transform x loss, :data:`CANDIDATES`) is
trained on seed 0; the candidate with the lowest validation selection metric
(:data:`SELECT_ON`) is then trained on the remaining seeds.  Every run is evaluated once on the
validation and the test split (``irreptensor_ml.evaluate.evaluate_run``) and its metrics are
written to ``<out>/<property>/<candidate>-s<seed>/``; finished runs are skipped, so an
interrupted invocation resumes.  ``<out>/summary.json`` and a Markdown table (mean over seeds, next
to the structure-blind baselines) are written at the end.

    python scripts/learn_models.py --out results/learn --properties dielectric piezoelectric elastic
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

#: model shared by every candidate: the full-cpu study's small trunk (8.7k parameters).
BASE = "irreptensor_ml/configs/learn.yaml"

#: candidate name -> config overrides (output transform and loss), per property.
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "dielectric": {
        "exp-log": ["model.outputs={dielectric: exp}", "loss.type=log"],
        "exp-relative": ["model.outputs={dielectric: exp}", "loss.type=relative"],
        "linear-frobenius": ["loss.type=frobenius"],
    },
    "piezoelectric": {
        "linear-relative": ["loss.type=relative"],
        "linear-frobenius": ["loss.type=frobenius"],
    },
    "elastic": {
        "exp-frobenius": ["model.outputs={elastic: exp}", "loss.type=frobenius"],
        "exp-log": ["model.outputs={elastic: exp}", "loss.type=log"],
        "linear-frobenius": ["loss.type=frobenius"],
    },
}

#: validation metric that picks the candidate (lower is better): the mean relative Frobenius
#: error (how users judge dielectric and piezoelectric tensors, EwT's quantity), and for the
#: elastic tensor the Frobenius error in GPa (its acceptance figure).
SELECT_ON = {"dielectric": "rel_frobenius", "piezoelectric": "rel_frobenius", "elastic": "frobenius_mae"}

#: properties' epoch budgets (early stopping on val/loss ends most runs sooner).
EPOCHS = {"dielectric": 80, "piezoelectric": 80, "elastic": 40}


def run_one(prop: str, cand: str, seed: int, out: Path) -> dict[str, Any]:
    """Train and evaluate one run (in a worker process); returns its record."""
    import torch

    from irreptensor_ml.evaluate import evaluate_run
    from irreptensor_ml.train import fit

    torch.set_num_threads(1)
    run_dir = out / prop / f"{cand}-s{seed}"
    record_path = run_dir / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    overrides = [
        f"data.properties=[{prop}]", f"seed={seed}", f"trainer.max_epochs={EPOCHS[prop]}",
        *CANDIDATES[prop][cand],
    ]
    started = time.time()
    fit(BASE, run_dir / "run", overrides)
    wall = time.time() - started
    record: dict[str, Any] = {"property": prop, "candidate": cand, "seed": seed, "overrides": overrides,
                              "train_wall_s": round(wall, 1)}
    for split in ("val", "test"):
        res = evaluate_run(run_dir / "run", split=split, out_dir=run_dir / f"eval_{split}", plots=split == "test",
                           data_overrides={"progress": False})
        record[split] = {k: float(v) for k, v in res.metrics[prop].items()}
    info = json.loads((run_dir / "run" / "run_info.json").read_text())
    record["num_parameters"] = info["model"]["num_parameters"]
    record["epochs_completed"] = info.get("epochs_completed")
    record["s_per_epoch"] = round(wall / max(1, int(info.get("epochs_completed") or 0) + 1), 2)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def baselines(prop: str) -> dict[str, dict[str, float]]:
    """Test metrics of structure-blind predictors: the zero tensor, the training mean tensor
    (rotation-averaged: its isotropic part) and the isotropic training median."""
    import irreptensor as it
    from irreptensor_ml.data import TensorDataModule
    from irreptensor_ml.metrics import irrep_blocks, tensor_metrics
    from irreptensor_ml.train.config import load_config

    cfg = load_config(BASE, [f"data.properties=[{prop}]", "data.progress=false"])
    dm = TensorDataModule(cfg["data"])
    dm.setup("fit")
    train = dm.train_dataset.targets(prop).numpy()
    test = dm.test_dataset.targets(prop).numpy()
    inv = [sl for name, sl in irrep_blocks(dm.irreps[prop]) if name.startswith("0e")]
    preds = {"zero": np.zeros_like(test)}
    if inv:
        med, mean = np.zeros(test.shape[1]), np.zeros(test.shape[1])
        for sl in inv:
            med[sl] = np.median(train[:, sl], axis=0)
            mean[sl] = train[:, sl].mean(axis=0)
        preds["isotropic_median"] = np.broadcast_to(med, test.shape).copy()
        preds["isotropic_mean"] = np.broadcast_to(mean, test.shape).copy()
    true_t = it.compose(test, prop)
    return {name: tensor_metrics(it.compose(p, prop), true_t, prop, pred_irreps=p, true_irreps=test)
            for name, p in preds.items()}


def mean_metrics(records: list[dict[str, Any]], split: str) -> dict[str, float]:
    keys = records[0][split].keys()
    return {k: float(np.mean([r[split][k] for r in records])) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/learn")
    ap.add_argument("--properties", nargs="+", default=["dielectric", "piezoelectric", "elastic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first, rest = args.seeds[0], args.seeds[1:]
    summary: dict[str, Any] = {"seeds": args.seeds, "select_on": SELECT_ON, "properties": {}}
    started = time.time()
    with cf.ProcessPoolExecutor(args.workers) as pool:
        stage1 = {(p, c): pool.submit(run_one, p, c, first, out) for p in args.properties for c in CANDIDATES[p]}
        chosen: dict[str, str] = {}
        stage2: dict[str, list[cf.Future]] = {}
        pending = set(args.properties)
        while pending:  # start the seeds of a property as soon as its candidates are done
            for p in sorted(pending):
                futs = {c: f for (q, c), f in stage1.items() if q == p}
                if all(f.done() for f in futs.values()):
                    scores = {c: f.result()["val"][SELECT_ON[p]] for c, f in futs.items()}
                    chosen[p] = min(scores, key=scores.get)
                    stage2[p] = [pool.submit(run_one, p, chosen[p], s, out) for s in rest]
                    summary["properties"][p] = {"candidates_val": scores, "chosen": chosen[p]}
                    pending.discard(p)
            time.sleep(2)
        for p in args.properties:
            recs = [stage1[(p, chosen[p])].result()] + [f.result() for f in stage2[p]]
            summary["properties"][p].update(
                runs=[f"{r['candidate']}-s{r['seed']}" for r in recs],
                val=mean_metrics(recs, "val"), test=mean_metrics(recs, "test"),
                test_per_seed=[r["test"] for r in recs],
                candidates_test_seed0={c: stage1[(p, c)].result()["test"] for c in CANDIDATES[p]},
                num_parameters=recs[0]["num_parameters"],
                s_per_epoch=float(np.median([r["s_per_epoch"] for r in recs])),
                baselines=baselines(p),
            )
    summary["wall_s"] = round(time.time() - started, 1)
    summary["cpu"] = os.cpu_count()
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({p: {k: v for k, v in d.items() if k in ("chosen", "candidates_val")}
                      for p, d in summary["properties"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
