"""Train the tuned per-property models on three seeds, report them beside the baselines, ship one.

For each property the configuration is ``configs/learn.yaml`` plus the overrides of the best
Optuna trial (``<tune>/<property>/best.json``, written by ``scripts/tune.py``; chosen on the MP
validation materials), or, for a property without a tuning study, the fallback of
:data:`FALLBACK`.  Seeds 0, 1, 2 are trained into ``<out>/<property>/s<seed>/`` (resumable:
finished seeds are skipped) and evaluated once on the MP validation and test materials (every
metric of :func:`irreptensor_ml.evaluate.compute_metrics`, parts included).  ``<out>/summary.json``
holds per-seed metrics, mean and std, those of the ensemble (mean of the seeds' models), the baselines of ``benchmarks/baselines.py``
(``<baselines>/<property>.json``), parameters and s/epoch.  With ``--ship DIR`` the model with the
best validation score (a seed, or the ensemble) is copied to ``DIR/<property>/model.pt`` with ``card.json`` and
``MODEL_CARD.md`` (the package default is ``irreptensor_ml/pretrained``).

    python scripts/train_final.py --properties dielectric piezoelectric elastic --out results/final \\
        --ship irreptensor_ml/pretrained
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune import BASE, SELECT_ON, scored_metrics  # noqa: E402

#: configuration of a property without a tuning study: the learn.yaml model with the exp output
#: (positive definite by construction) and the Frobenius loss.
FALLBACK = {
    "elastic": ["data.properties=[elastic]", "model.outputs={elastic: exp}", "loss.type=frobenius",
                "trainer.max_epochs=40"],
    "dielectric": ["data.properties=[dielectric]", "model.outputs={dielectric: exp}",
                   "model.heads={dielectric: {parts: true}}", "loss.type=relative"],
    "piezoelectric": ["data.properties=[piezoelectric]", "loss.type=relative"],
}


#: overrides added to (or replacing the same key of) the tuned configuration.  The shipped
#: dielectric model must predict the electronic part (refractive index), so its head predicts the
#: parts whether or not the best trial did.  The elastic trunk needs ``l = 4`` edge harmonics:
#: at a site of cubic symmetry every ``l = 1, 2, 3`` feature vanishes, so with ``lmax_sh < 4`` the
#: ``4e`` block (the cubic anisotropy) of a cubic crystal is exactly zero and C is predicted
#: isotropic (``tests/ml/test_model_components.py::test_cubic_crystal_needs_lmax_sh_4``).
REQUIRED = {"dielectric": ["model.heads={dielectric: {parts: true}}"],
            "elastic": ["model.trunk.lmax_sh=4"]}


def overrides_for(prop: str, tune_dir: Path) -> tuple[list[str], str]:
    """``(overrides without the seed, where they came from)``."""
    best = tune_dir / prop / "best.json"
    if best.is_file():
        data = json.loads(best.read_text())
        found = [o for o in data["overrides"] if not o.startswith("seed=")]
        extra = [o for o in REQUIRED.get(prop, []) if o not in found]
        replaced = {o.split("=", 1)[0] for o in extra}
        found = [o for o in found if o.split("=", 1)[0] not in replaced]
        source = f"optuna trial {data['best_number']} ({best})" + (f" plus {extra}" if extra else "")
        return found + extra, source
    return list(FALLBACK[prop]), "fallback (no tuning study)"


def run_seed(prop: str, overrides: list[str], seed: int, out: Path) -> dict[str, Any]:
    import torch

    from irreptensor_ml.train import fit

    torch.set_num_threads(1)
    seed_dir = out / prop / f"s{seed}"
    record_path = seed_dir / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    started = time.time()
    fit(BASE, seed_dir / "run", [*overrides, f"seed={seed}"])
    wall = time.time() - started
    info = json.loads((seed_dir / "run" / "run_info.json").read_text())
    epochs = int(info.get("epochs_completed") or 0) + 1
    record = {"property": prop, "seed": seed, "overrides": overrides, "train_wall_s": round(wall, 1),
              "epochs": epochs, "s_per_epoch": round(wall / epochs, 2),
              "num_parameters": info["model"]["num_parameters"], "device": info.get("hardware", {}),
              "val": scored_metrics(seed_dir / "run", prop, "val"),
              "test": scored_metrics(seed_dir / "run", prop, "test", plots=True)}
    shutil.rmtree(seed_dir / "run" / "checkpoints", ignore_errors=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def build_ensemble(prop: str, seeds: list[int], out: Path) -> dict[str, Any]:
    """Average the seeds' models (:class:`irreptensor_ml.model.TensorEnsemble`), save it to
    ``<out>/<property>/ensemble/model.pt`` and score it like a seed."""
    import torch
    import yaml

    from irreptensor_ml.model import TensorEnsemble
    from irreptensor_ml.train.checkpoint import load_model, save_model

    ens_dir = out / prop / "ensemble"
    record_path = ens_dir / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    torch.set_num_threads(1)
    runs = [out / prop / f"s{s}" / "run" for s in seeds]
    members = [load_model(r)[0] for r in runs]
    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    path = save_model(ens_dir / "model.pt", TensorEnsemble(members), config, {"members": [str(r) for r in runs]})
    record = {"property": prop, "seeds": seeds, "num_parameters": sum(p.numel() for m in members for p in m.parameters()),
              "val": scored_metrics(path, prop, "val"), "test": scored_metrics(path, prop, "test", plots=True)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def ship(prop: str, summary: dict[str, Any], out: Path, ship_dir: Path) -> Path:
    """Copy the best-validation seed's model with a card (format of :mod:`irreptensor_ml.transfer.ship`)."""
    import yaml

    from irreptensor_ml.metrics import TENSOR_UNITS
    from irreptensor_ml.train.checkpoint import load_model
    from irreptensor_ml.transfer.ship import _card_markdown

    s = summary["properties"][prop]
    seed = s["shipped_seed"]
    run = out / prop / f"s{seed if seed != 'ensemble' else s['seeds'][0]}" / "run"
    if seed == "ensemble":
        rec, model_file = s["ensemble"], out / prop / "ensemble" / "model.pt"
    else:
        rec, model_file = next(r for r in s["per_seed"] if r["seed"] == seed), run / "model.pt"
    info = json.loads((run / "run_info.json").read_text())
    dest = ship_dir / prop
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, dest / "model.pt")
    load_model(dest / "model.pt")  # the shipped file loads
    base = summary["baselines"].get(prop, {}).get("baselines", {})
    card = {
        "property": prop, "irreps": info["model"]["irreps"][prop], "units": TENSOR_UNITS[prop],
        "study": "scripts/train_final.py", "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": f"{prop}/{'ensemble of seeds ' + str(s['seeds']) if seed == 'ensemble' else f's{seed}'}",
        "strategy": (f"trained on {prop} only{', mean of the seeds models' if seed == 'ensemble' else ''}; "
                     f"configuration: {s['config_source']}"),
        "fraction": 1.0, "seed": seed,
        "n_train": info["data"]["summary"]["num_samples"][prop]["train"],
        "n_val": info["data"]["summary"]["num_samples"][prop]["val"],
        "n_test": int(rec["test"][prop]["n"]),
        "split": {k: info["config"]["data"][k] for k in ("split_seed", "split_fractions")},
        "data_config": info["config"]["data"], "data_hashes": info["data"]["hashes"],
        "evaluated_on": "MP materials of the validation / test split (other sources are training data only)",
        "val_metrics": rec["val"], "test_metrics": rec["test"][prop],
        "test_metrics_parts": {k: v for k, v in rec["test"].items() if k != prop},
        "strategy_test_metrics": s["test"][prop],
        "baselines": {name: b[prop] for name, b in base.items()},
        "device": f"{os.cpu_count()}-core CPU ({info.get('hardware', {}).get('platform', 'unknown')})",
        "train_config": yaml.safe_load((run / "config.yaml").read_text()),
        "num_parameters": rec["num_parameters"], "s_per_epoch": s["s_per_epoch_median"],
    }
    (dest / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    text = _card_markdown(prop, card)
    if card["test_metrics_parts"]:
        text += "\n## Parts (test, this model)\n\n| part | frobenius_mae | ewt25 | refractive_index_mae |\n|---|---|---|---|\n"
        for k, m in card["test_metrics_parts"].items():
            n_mae = m.get("refractive_index_mae")
            text += f"| {k} | {m['frobenius_mae']:.4g} | {m['ewt25']:.3g} | {'–' if n_mae is None else f'{n_mae:.3g}'} |\n"
    (dest / "MODEL_CARD.md").write_text(text)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--properties", nargs="+", default=["dielectric", "piezoelectric", "elastic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tune", default="results/tune")
    ap.add_argument("--baselines", default="results/baselines")
    ap.add_argument("--out", default="results/final")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ship", default=None, help="directory to ship the best-validation seed's model to")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {p: overrides_for(p, Path(args.tune)) for p in args.properties}
    started = time.time()
    with cf.ProcessPoolExecutor(args.workers) as pool:
        futs = {(p, s): pool.submit(run_seed, p, configs[p][0], s, out) for p in args.properties for s in args.seeds}
        records = {k: f.result() for k, f in futs.items()}
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"properties": {}, "baselines": {}}
    for p in args.properties:
        recs = [records[(p, s)] for s in args.seeds]
        keys = {k: list(recs[0]["test"][k]) for k in recs[0]["test"]}
        best = min(recs, key=lambda r: r["val"][p][SELECT_ON[p]])
        ensemble = build_ensemble(p, args.seeds, out) if len(args.seeds) > 1 else None
        # ship the ensemble when its validation score beats the best single seed's
        shipped = best["seed"]
        if ensemble is not None and ensemble["val"][p][SELECT_ON[p]] < best["val"][p][SELECT_ON[p]]:
            shipped = "ensemble"
        summary["properties"][p] = {
            "config_source": configs[p][1], "overrides": configs[p][0], "seeds": args.seeds,
            "select_on": SELECT_ON[p], "shipped_seed": shipped, "ensemble": ensemble,
            "num_parameters": recs[0]["num_parameters"],
            "s_per_epoch_median": float(np.median([r["s_per_epoch"] for r in recs])),
            "epochs": [r["epochs"] for r in recs],
            "val": {k: {m: _stats([r["val"][k][m] for r in recs]) for m in ms} for k, ms in keys.items()},
            "test": {k: {m: _stats([r["test"][k][m] for r in recs]) for m in ms} for k, ms in keys.items()},
            "per_seed": recs,
        }
        bpath = Path(args.baselines) / f"{p}.json"
        if bpath.is_file():
            summary["baselines"][p] = json.loads(bpath.read_text())
    summary["machine"] = f"{os.cpu_count()}-core CPU VM, 1 thread per run, {args.workers} runs at a time"
    summary["wall_s_last_invocation"] = round(time.time() - started, 1)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    if args.ship:
        for p in args.properties:
            print("shipped", ship(p, summary, out, Path(args.ship)))
    for p in args.properties:
        ens = summary["properties"][p]["ensemble"]
        if ens:
            print(p, "ensemble", {k: round(v, 4) for k, v in ens["test"][p].items() if k in ("frobenius_mae", "ewt25")})
        t = summary["properties"][p]["test"]
        print(p, {k: {m: round(v["mean"], 4) for m, v in ms.items() if v["mean"] is not None and m in (
            "frobenius_mae", "ewt25", "rel_frobenius", "refractive_index_mae", "norm_spearman", "K_VRH_mae",
            "G_VRH_mae", "n_not_positive_definite", "n_eigenvalue_below_1", "zener_mae")} for k, ms in t.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
