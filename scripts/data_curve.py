"""Validation error against the amount of training data, for the tuned configuration of a property.

Does more data help, or is a property limited by something else (label noise, frames, the model
family)?  Trains the best Optuna configuration of ``<tune>/<property>/best.json`` (the one
``scripts/train_final.py`` ships) on nested subsamples of the training materials
(``data.train_fraction``; the same subsample for every seed) and scores each run on the training
and validation materials that the tuning scores (MP for dielectric and piezoelectric).  Writes
``<out>/<property>/data_curve.json`` and ``data_curve.png`` (resumable: finished runs are kept).

    python scripts/data_curve.py piezoelectric --fractions 0.25 0.5 1.0 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune import BASE, SELECT_ON, scored_metrics  # noqa: E402

#: metrics shown in the plot and the printed table, beside the selection metric
SHOWN = {"piezoelectric": ("rel_frobenius", "frobenius_mae", "norm_spearman"),
         "dielectric": ("rel_frobenius", "frobenius_mae", "ewt25"),
         "elastic": ("frobenius_mae", "ewt25", "K_VRH_mae")}


def run_one(prop: str, overrides: list[str], fraction: float, seed: int, out: Path) -> dict[str, Any]:
    import torch

    from irreptensor_ml.train import fit

    torch.set_num_threads(1)
    run_dir = out / f"f{fraction:g}-s{seed}"
    record_path = run_dir / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    over = [*overrides, f"data.train_fraction={fraction}", f"seed={seed}", "data.progress=false"]
    started = time.time()
    fit(BASE, run_dir / "run", over)
    info = json.loads((run_dir / "run" / "run_info.json").read_text())
    record = {"fraction": fraction, "seed": seed, "overrides": over, "train_wall_s": round(time.time() - started, 1),
              "epochs": int(info.get("epochs_completed") or 0) + 1,
              "n_train": info["data"]["summary"]["num_samples"][prop]["train"],
              "train": scored_metrics(run_dir / "run", prop, "train")[prop],
              "val": scored_metrics(run_dir / "run", prop, "val")[prop]}
    shutil.rmtree(run_dir / "run" / "checkpoints", ignore_errors=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def plot(prop: str, records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = SHOWN[prop]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        for side, style in (("train", "o--"), ("val", "o-")):
            by_n: dict[int, list[float]] = {}
            for r in records:
                by_n.setdefault(r["n_train"], []).append(r[side][name])
            n = sorted(by_n)
            ax.plot(n, [np.mean(by_n[k]) for k in n], style, label=side)
            for k in n:
                ax.plot([k] * len(by_n[k]), by_n[k], ".", color=ax.lines[-1].get_color(), alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend()
    fig.suptitle(f"{prop}: error against training-set size (MP scored materials; mean of seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("property", choices=sorted(SELECT_ON))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--tune", default="results/tune")
    ap.add_argument("--out", default="results/audit")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides after the tuned ones (e.g. trainer.max_epochs=1 for a smoke run)")
    args = ap.parse_args(argv)
    for f in args.fractions:
        if not 0 < f <= 1:
            ap.error(f"--fractions: {f} is not in (0, 1]")
    best = json.loads((Path(args.tune) / args.property / "best.json").read_text())
    overrides = [o for o in best["overrides"] if not o.startswith("seed=")] + list(args.set)
    out = Path(args.out) / args.property / "data_curve"
    records = [run_one(args.property, overrides, f, s, out) for f in args.fractions for s in args.seeds]
    summary = {"property": args.property, "config": f"optuna trial {best['best_number']} ({args.tune})",
               "overrides": overrides, "runs": records}
    (out.parent / "data_curve.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(args.property, records, out.parent / "data_curve.png")
    print(f"| fraction | n_train | " + " | ".join(f"train {m} | val {m}" for m in SHOWN[args.property]) + " |")
    for f in args.fractions:
        rs = [r for r in records if r["fraction"] == f]
        cells = " | ".join(f"{np.mean([r['train'][m] for r in rs]):.3g} | {np.mean([r['val'][m] for r in rs]):.3g}"
                           for m in SHOWN[args.property])
        print(f"| {f:g} | {rs[0]['n_train']} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
