"""Evaluation loop: run a trained model over a data split and report tensor metrics.

Steps: model forward (physical irreps; the model holds its normalization and output transform)
-> ``irreptensor.compose`` (Cartesian tensors) -> :func:`irreptensor_ml.metrics.tensor_metrics`
per property -> files in the output directory (default ``<run_dir>/eval_<split>/``):

* ``metrics.json`` -- ``{"split", "run_dir", "n_samples", "metrics": {property: {name: value}},
  "floors", "definitions"}``;
* ``predictions.json`` -- per property a list of ``{"material_id", "true_voigt", "pred_voigt",
  "true_irreps", "pred_irreps", "true_derived", "pred_derived", "rel_frobenius"}``;
* ``parity_<property>.png`` and ``learning_curves.png`` (from the run's Lightning ``metrics.csv``),
  see :mod:`irreptensor_ml.plots`.

Only samples whose batch mask is ``True`` for a property count for that property; a model head
with no target in the split is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

import irreptensor as it
from irreptensor_ml import metrics as M
from irreptensor_ml.atomic import atomic_write_text

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass
class PropertyPredictions:
    """Predictions and targets of one property over a split, physical units.

    Attributes:
        property: the property name, or ``"<property>_<part>"`` for a part
            (``dielectric_electronic``).
        material_ids: ``N`` sample labels (``Batch.material_ids``).
        pred_irreps, true_irreps: ``(N, dim)`` float64 irreps (``irreptensor.irreps(kind)``).
        kind: the tensor kind (``property`` itself, or the property a part belongs to).
    """

    property: str
    material_ids: list[str]
    pred_irreps: np.ndarray
    true_irreps: np.ndarray
    kind: str = ""

    def __post_init__(self) -> None:
        self.kind = self.kind or self.property

    @property
    def pred(self) -> np.ndarray:
        """``(N, 3, ..., 3)`` predicted Cartesian tensors."""
        return np.asarray(it.compose(self.pred_irreps, self.kind), dtype=np.float64)

    @property
    def true(self) -> np.ndarray:
        """``(N, 3, ..., 3)`` target Cartesian tensors."""
        return np.asarray(it.compose(self.true_irreps, self.kind), dtype=np.float64)

    def __len__(self) -> int:
        return len(self.material_ids)

    def subset(self, keep: Sequence[bool]) -> "PropertyPredictions":
        """The rows where ``keep`` is True (e.g. the materials of one source)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"subset: keep has shape {keep.shape}, expected ({len(self)},)")
        return dataclasses.replace(
            self, material_ids=[m for m, k in zip(self.material_ids, keep) if k],
            pred_irreps=self.pred_irreps[keep], true_irreps=self.true_irreps[keep],
        )


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate_run` / :func:`evaluate_model` computed and wrote."""

    metrics: dict[str, dict[str, float]]
    predictions: dict[str, PropertyPredictions]
    out_dir: Path | None
    files: list[Path]


def _model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters(), None)
    return (p.dtype, p.device) if p is not None else (torch.get_default_dtype(), torch.device("cpu"))


def collect_predictions(
    model: torch.nn.Module,
    batches: Iterable[Any],
    properties: Sequence[str] | None = None,
) -> dict[str, PropertyPredictions]:
    """Run ``model`` over ``batches`` and gather its predictions with their targets.

    The pass is Lightning's ``Trainer.predict`` (:func:`irreptensor_ml.train.trainer.predict_batches`:
    no gradients, eval mode, on the model's device; the model's mode is restored afterwards).

    Args:
        model: ``TensorPredictor``-like module, ``model(batch) -> {prop: (B, dim)}`` in physical
            irreps units (the normalization and output transform live in the model).
        batches: ``DataLoader`` or iterable of :class:`~irreptensor_ml.data.batch.Batch` (targets
            in physical irreps units, ``masks[prop]`` marking samples that have the property).
        properties: properties to collect; default every head.  A head with parts also gives
            ``"<prop>_<part>"`` entries (where the batches have those targets).

    Returns:
        ``{key: PropertyPredictions}`` for keys with at least one masked-in sample.

    Raises:
        ValueError: a requested property has no head in the model.
    """
    heads = list(model.heads.keys())
    props = list(properties) if properties is not None else heads
    for p in props:
        M.check_property(p)
        if p not in heads:
            raise ValueError(f"model has no head for property {p!r} (heads: {', '.join(heads)})")
    kinds = {p: p for p in props}  # output key -> tensor kind; a part has its property's kind
    for p in props:
        kinds.update({f"{p}_{part}": p for part in model.outputs[p].parts})
    dtype, _ = _model_dtype_device(model)

    def step(net: torch.nn.Module, batch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """``{key: (pred, true, material ids)}`` of the rows of ``batch`` that have the key."""
        present = [p for p in kinds if p in batch.masks and bool(batch.masks[p].any())]
        if not present:
            return {}
        out = net(batch.to(dtype=dtype))
        rows = {}
        for p in present:
            mask = batch.masks[p].to("cpu")
            rows[p] = (
                out[p].detach().to("cpu", torch.float64)[mask],
                batch.targets[p].to("cpu", torch.float64)[mask],
                [m for m, keep in zip(batch.material_ids, mask.tolist()) if keep],
            )
        return rows

    from irreptensor_ml.train.trainer import predict_batches

    ids: dict[str, list[str]] = {p: [] for p in kinds}
    preds: dict[str, list[torch.Tensor]] = {p: [] for p in kinds}
    trues: dict[str, list[torch.Tensor]] = {p: [] for p in kinds}
    for rows in predict_batches(model, batches, step):
        for p, (y, t, m) in rows.items():
            preds[p].append(y)
            trues[p].append(t)
            ids[p].extend(m)
    return {
        p: PropertyPredictions(p, ids[p], torch.cat(preds[p]).numpy(), torch.cat(trues[p]).numpy(), kinds[p])
        for p in kinds
        if preds[p]
    }


def compute_metrics(predictions: Mapping[str, PropertyPredictions]) -> dict[str, dict[str, float]]:
    """``{key: metrics.tensor_metrics(...)}`` for each property's (or part's) predictions; the
    electronic dielectric part also gets the refractive-index metrics
    (:func:`irreptensor_ml.metrics.refractive_index_metrics`)."""
    out = {}
    for p, d in predictions.items():
        pred, true = d.pred, d.true
        part = p[len(d.kind) + 1:] if p != d.kind else None
        out[p] = M.tensor_metrics(pred, true, d.kind, pred_irreps=d.pred_irreps, true_irreps=d.true_irreps,
                                  part=part)
        if p == "dielectric_electronic":
            out[p].update(M.refractive_index_metrics(pred, true))
    return out


def _json_float(x: float) -> float | None:
    """NaN/inf -> None (strict JSON has no NaN)."""
    return None if not math.isfinite(x) else float(x)


def predictions_to_json(predictions: Mapping[str, PropertyPredictions]) -> dict[str, list[dict[str, Any]]]:
    """JSON-ready per-sample records (see module doc); Voigt per ``irreptensor.to_voigt``,
    dielectric as the 3x3 matrix."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p, d in predictions.items():
        pred, true, kind = d.pred, d.true, d.kind
        if kind == "dielectric":
            pv, tv = pred, true
        else:
            pv = np.asarray(it.to_voigt(pred, kind))
            tv = np.asarray(it.to_voigt(true, kind))
        dp, dt = M.derived_scalars(pred, kind), M.derived_scalars(true, kind)
        rel = M.relative_frobenius_error(pred, true, M.RELATIVE_ERROR_FLOORS[kind])
        out[p] = [
            {
                "material_id": mid,
                "true_voigt": tv[k].tolist(),
                "pred_voigt": pv[k].tolist(),
                "true_irreps": d.true_irreps[k].tolist(),
                "pred_irreps": d.pred_irreps[k].tolist(),
                "true_derived": {n: _json_float(v[k]) for n, v in dt.items()},
                "pred_derived": {n: _json_float(v[k]) for n, v in dp.items()},
                "rel_frobenius": _json_float(rel[k]),
            }
            for k, mid in enumerate(d.material_ids)
        ]
    return out


def _write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[Any],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    properties: Sequence[str] | None = None,
    split: str = "test",
    metrics_csv: str | os.PathLike[str] | None = None,
    plots: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate a loaded model on ``batches``; write files to ``out_dir`` if given.

    Args:
        model, batches, properties: see :func:`collect_predictions`.
        out_dir: where ``metrics.json``, ``predictions.json`` and plots go; ``None`` writes nothing.
        split: split name recorded in ``metrics.json``.
        metrics_csv: Lightning ``metrics.csv`` for the learning-curve plot (optional).
        plots: draw parity plots (and learning curves).
        extra: more entries for ``metrics.json`` (e.g. the run directory).

    Raises:
        ValueError: no sample of any requested property in ``batches``.
    """
    predictions = collect_predictions(model, batches, properties)
    if not predictions:
        raise ValueError(f"split {split!r} has no samples with a target for the model's properties")
    metrics = compute_metrics(predictions)
    files: list[Path] = []
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        summary = {
            "split": split,
            **dict(extra or {}),
            "n_samples": {p: len(d) for p, d in predictions.items()},
            "metrics": {p: {k: _json_float(v) for k, v in m.items()} for p, m in metrics.items()},
            "floors": {p: M.RELATIVE_ERROR_FLOORS[d.kind] for p, d in predictions.items()},
            "definitions": "see irreptensor_ml.metrics: relative error = ||pred-true||_F / "
            "max(||true||_F, floor); ewtX = share with relative error < X %; *_above_floor = "
            "restricted to ||true||_F >= floor",
        }
        files.append(_write_json(out / "metrics.json", summary))
        files.append(_write_json(out / "predictions.json", predictions_to_json(predictions)))
        if plots:
            from irreptensor_ml.plots import plot_run

            files.extend(
                plot_run(
                    {p: {"pred": d.pred, "true": d.true, "pred_irreps": d.pred_irreps,
                         "true_irreps": d.true_irreps, "kind": d.kind} for p, d in predictions.items()},
                    out, metrics_csv=metrics_csv,
                )
            )
    return EvaluationResult(metrics, predictions, out, files)


def find_metrics_csv(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's Lightning ``metrics.csv`` (``run_dir/metrics.csv`` or the newest one below it)."""
    run_dir = Path(run_dir)
    direct = run_dir / "metrics.csv"
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def split_batches(datamodule: Any, split: str, dtype: torch.dtype) -> Iterable[Any]:
    """Deterministic (unshuffled) batches of one split of a set-up ``TensorDataModule``."""
    from torch.utils.data import DataLoader

    from irreptensor_ml.data.batch import collate

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    dataset = getattr(datamodule, f"{split}_dataset")
    dims = {**datamodule.dims, **getattr(datamodule, "part_dims", {})}
    return DataLoader(
        dataset,
        batch_size=int(datamodule.config.batch_size),
        shuffle=False,
        collate_fn=lambda samples: collate(samples, dims).to(dtype=dtype),
    )


def data_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The data section of a training config (``config["data"]``)."""
    data = config.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("training config has no 'data' section; cannot rebuild the data split")
    return dict(data)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    split: str = "test",
    out_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    plots: bool = True,
    data_overrides: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate a training run directory on one split of the data it was trained on.

    The model, normalizers and config come from :func:`irreptensor_ml.train.load_model`; the
    split is rebuilt by ``TensorDataModule(config["data"])`` (deterministic by ``split_seed``).

    Args:
        run_dir: directory written by :func:`irreptensor_ml.train.fit` (or its ``model.pt``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        out_dir: output directory; default ``<run_dir>/eval_<split>``.
        device: torch device for the model.
        plots: write parity plots and learning curves.
        data_overrides: data-config entries to replace (e.g. ``{"progress": False}``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    run_path = Path(run_dir)
    if not run_path.exists():
        raise FileNotFoundError(f"run directory not found: {run_path}")
    from irreptensor_ml.data.datamodule import TensorDataModule
    from irreptensor_ml.train import load_model

    model, _, config = load_model(run_path)
    model = model.to(device)
    run_root = run_path if run_path.is_dir() else run_path.parent
    data_cfg = {**data_config(config), **dict(data_overrides or {})}
    dm = TensorDataModule(data_cfg)
    dm.setup("test" if split == "test" else "fit")
    dtype, _ = _model_dtype_device(model)
    out = Path(out_dir) if out_dir is not None else run_root / f"eval_{split}"
    return evaluate_model(
        model, split_batches(dm, split, dtype), out,
        split=split, metrics_csv=find_metrics_csv(run_root), plots=plots,
        extra={"run_dir": str(run_root)},
    )
