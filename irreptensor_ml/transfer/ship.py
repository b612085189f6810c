"""Export the study's best model per property as a shippable pretrained model with a model card.

For every property of the study (the pretraining property and each target) the model chosen on
VALIDATION is exported: the strategy with the lowest mean validation Frobenius MAE at the largest
training fraction (all training materials), and among its seeds the run with the lowest
validation Frobenius MAE; for the pretraining property the pretraining run with the lowest
validation Frobenius MAE. Output per property::

    <out_dir>/<property>/model.pt       weights-only model (irreptensor_ml.train.load_model format)
    <out_dir>/<property>/MODEL_CARD.md  data, split, strategy, metrics, config, hardware
    <out_dir>/<property>/card.json      the same, machine-readable

``irreptensor_ml.predict.predict(structures, property=...)`` and ``irreptensor-ml predict`` load
``irreptensor_ml/pretrained/<property>/model.pt`` by default, so exporting into
``irreptensor_ml/pretrained`` makes these models the package defaults.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["choose_models", "export_models"]


def choose_models(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{property: {"run_id", "strategy", "fraction", "seed", "val", "test", "strategy_test"}}``
    of the model to ship per property (chosen on validation only)."""
    out: dict[str, dict[str, Any]] = {}
    for prop, best in summary["best_on_validation"].items():
        if best["strategy"] == "pretrain":
            run = next(r for r in summary["pretrain"]["runs"] if r["run_id"] == best["run_id"])
            out[prop] = {"run_id": run["run_id"], "strategy": "pretrain (trained on this property only)",
                         "fraction": 1.0, "seed": run["seed"], "val": run["val"], "test": run["test"],
                         "strategy_test": summary["pretrain"]["test"]}
            continue
        cell = summary["results"][prop][best["strategy"]][f"{float(best['fraction']):g}"]
        run = min(cell["runs"], key=lambda r: r["val"].get("frobenius_mae") or math.inf)
        out[prop] = {"run_id": run["run_id"], "strategy": best["strategy"], "fraction": best["fraction"],
                     "seed": run["seed"], "val": run["val"], "test": run["test"],
                     "strategy_test": cell["test"], "val_by_strategy": best.get("val_frobenius_mae")}
    return out


def _card_markdown(prop: str, card: Mapping[str, Any]) -> str:
    m = card["test_metrics"]
    unit = card["units"] or "dimensionless"
    lines = [
        f"# Pretrained {prop} model",
        "",
        f"- Predicts the full Cartesian {prop} tensor ({unit}) of a crystal structure as irreps "
        f"`{card['irreps']}`; load with `irreptensor_ml.predict.predict(structures, property='{prop}')` or "
        f"`irreptensor-ml predict FILE --property {prop}`.",
        f"- Strategy: **{card['strategy']}** (chosen on the validation set among the study's strategies); "
        f"run `{card['run_id']}`, seed {card['seed']}.",
        f"- Training data: all training materials of `{prop}` (fraction {card['fraction']:g}); "
        f"{card['n_train']} training, {card['n_val']} validation (early stopping / selection), "
        f"{card['n_test']} test samples. Files: {', '.join(sorted(card['data_hashes'])) or 'see card.json'}.",
        f"- Split: one union split over all materials of all properties (split seed {card['split']['split_seed']}, "
        f"fractions {card['split']['split_fractions']}); no test material of any property was used for training, "
        "validation or pretraining.",
        f"- Trained on {card['device']}; study `{card['study']}` ({card['created']}).",
        "",
        "## Test metrics (evaluated once)",
        "",
        "| metric | this model | strategy mean ± std over seeds |",
        "|---|---|---|",
    ]
    for k, v in m.items():
        st = (card.get("strategy_test_metrics") or {}).get(k) or {}
        spread = "–" if st.get("mean") is None else (
            f"{st['mean']:.4g}" + ("" if st.get("std") is None else f" ± {st['std']:.3g}") + f" (n={st['n']})")
        lines.append(f"| {k} | {'–' if v is None else f'{v:.4g}'} | {spread} |")
    base = card.get("baselines") or {}
    if base:
        cols = [c for c in ("frobenius_mae", "ewt25", "norm_spearman") if any(c in b for b in base.values())]
        cell = lambda b, c: "–" if b.get(c) is None or b[c] != b[c] else f"{b[c]:.4g}"  # noqa: E731  (missing or NaN)
        lines += ["", "Baselines on the same test set (structure-blind predictors, and random forests on "
                  "simple composition and structure descriptors where there are any):", "",
                  "| predictor | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(cell(b, c) for c in cols) + " |" for name, b in base.items()]
        worse = [name for name, b in base.items()
                 if m.get("frobenius_mae") is not None and b.get("frobenius_mae") is not None
                 and m["frobenius_mae"] >= b["frobenius_mae"]]
        if worse:
            lines += ["", f"**Warning: this model's test Frobenius MAE is not better than the trivial "
                      f"baseline(s) {', '.join(worse)}.** Treat its predictions as unreliable."]
    lines += [
        "",
        "## Limitations",
        "",
        "- Trained on DFT (PBE/PBEsol) data of the shipped data sets (see `irreptensor_ml/datasets/README.md`); "
        "accuracy outside their chemistry and structure types is unknown.",
        "- Tensors are predicted in the Cartesian frame of the input structure.",
        "",
        "## Training configuration",
        "",
        "```yaml",
        yaml.safe_dump(card["train_config"], sort_keys=False).rstrip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


def export_models(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the chosen model of each property into ``out_dir/<property>/`` with its model card.

    Reads ``results_dir/summary.json`` (written by the study) and the run records. Every
    exported model is loaded back with :func:`irreptensor_ml.train.load_model` as a check.
    Returns the written paths. Raises ``ValueError`` if the study has no summary yet.
    """
    from irreptensor_ml.metrics import TENSOR_UNITS
    from irreptensor_ml.train.checkpoint import load_model
    from irreptensor_ml.transfer.study import RunStore

    results = Path(results_dir)
    summary_path = results / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{summary_path} does not exist; run the study (with its report) first")
    summary = json.loads(summary_path.read_text())
    store = RunStore(results)
    written: list[Path] = []
    for prop, choice in choose_models(summary).items():
        rec = store.load(choice["run_id"])
        src = store.model_path(choice["run_id"])
        if rec is None or not src.is_file():
            raise ValueError(f"model file of run {choice['run_id']} is missing ({src})")
        dest = Path(out_dir) / prop
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / "model.pt")
        model, normalizers, _ = load_model(dest / "model.pt")  # must load back
        if prop not in normalizers:
            raise ValueError(f"exported model of {prop} has no {prop} head")
        spec = rec["spec"]
        data_cfg = summary["data"]["data_config"]
        card = {
            "property": prop,
            "irreps": normalizers[prop].irreps,
            "units": TENSOR_UNITS.get(prop, ""),
            "study": summary["name"],
            "created": summary["created"],
            "run_id": choice["run_id"],
            "strategy": choice["strategy"],
            "fraction": float(choice["fraction"]),
            "seed": choice["seed"],
            "n_train": rec["train"]["n_train_target"],
            "n_val": rec["train"]["n_val"],
            "n_test": rec["train"]["n_test"],
            "split": {k: data_cfg.get(k) for k in ("split_seed", "split_fractions")},
            "data_config": data_cfg,
            "data_hashes": summary["data"].get("hashes", {}),
            "data_fingerprint": summary["data"]["fingerprint"],
            "val_metrics": rec["val"],
            "test_metrics": rec["test"],
            "strategy_test_metrics": choice.get("strategy_test"),
            "val_frobenius_mae_by_strategy": choice.get("val_by_strategy"),
            "train_config": spec["train_config"],
            "trunk_lr_scale": spec.get("trunk_lr_scale"),
            "device": rec.get("device"),
            "versions": summary.get("versions"),
            "num_parameters": rec["train"].get("num_parameters"),
            "baselines": {name: {k: b.get(k) for k in ("frobenius_mae", "ewt25")}
                          for name, b in (summary.get("baselines") or {}).get(prop, {}).items()},
        }
        (dest / "card.json").write_text(json.dumps(card, indent=1, default=str) + "\n")
        (dest / "MODEL_CARD.md").write_text(_card_markdown(prop, card))
        written += [dest / "model.pt", dest / "card.json", dest / "MODEL_CARD.md"]
    return written
