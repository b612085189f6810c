"""The shipped dielectric model beside the transfer study's models, on the study's own materials.

The transfer study (issue 14) compares strategies on one small shared trunk; the shipped model is the
larger tuned scratch model of ``scripts/train_final.py``.  Both use the same union split (split seed 0)
and graphs at 5 Angstrom, so the shipped model can be scored on the study's validation and test
materials (all sources) and set beside the study's rows: this is how the shipped model is chosen on
validation from the study.  Only the dielectric model is compared: the shipped elastic and
piezoelectric models use a 4 Angstrom cutoff, and the study's graphs are built at 5.

    python scripts/compare_shipped.py --study results/transfer/learn_cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from irreptensor_ml.evaluate import collect_predictions, compute_metrics
    from irreptensor_ml.predict import pretrained_model_path
    from irreptensor_ml.train.checkpoint import load_model
    from irreptensor_ml.transfer.studydata import StudyData

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="results/transfer/learn_cpu")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    root = Path(args.study)
    caches = sorted((root / "data").glob("*.pt"))
    if not caches:
        ap.error(f"{root / 'data'} holds no study-data file: run the study first")
    data = StudyData.load(caches[0])
    summary = json.loads((root / "summary.json").read_text())
    model, _, _ = load_model(pretrained_model_path("dielectric"))
    model.eval()
    keys = ["dielectric", "dielectric_electronic", "dielectric_ionic"]
    rows = {}
    for side in ("val", "test"):
        ds = data.dataset(data.indices(side, "dielectric"), keys, id_property="dielectric")
        loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=data.collate_fn(keys, torch.float32))
        with torch.no_grad():
            metrics = compute_metrics(collect_predictions(model, loader, ["dielectric"]))
        rows[side] = {k: metrics[k]["frobenius_mae"] for k in ("dielectric", "dielectric_electronic")}
        rows[side]["refractive_index_mae"] = metrics["dielectric_electronic"].get("refractive_index_mae")
    print("| target | shipped model: val | study best on val (strategy): val | shipped: test | that strategy: test |")
    print("|---|---|---|---|---|")
    for target in ("dielectric", "dielectric_electronic"):
        best = {**summary.get("best_on_validation", {}), **summary.get("best_on_validation_parts", {})}[target]
        cell = summary["results"][target][best["strategy"]][f"{float(best['fraction']):g}"]
        val = cell["val_frobenius_mae"]["mean"]
        test = cell["test"]["frobenius_mae"]["mean"]
        rows.setdefault("study", {})[target] = {"strategy": best["strategy"], "val": val, "test": test}
        print(f"| {target} | {rows['val'][target]:.4g} | {val:.4g} ({best['strategy']}) | "
              f"{rows['test'][target]:.4g} | {test:.4g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0 if np.isfinite([rows["val"]["dielectric"]]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
