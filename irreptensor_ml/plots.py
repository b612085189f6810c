"""Figures of a training run: parity plots of predicted tensors and learning curves.

* :func:`plot_parity` -- for one property, a grid of true-vs-predicted scatter plots, one panel
  per irrep block (all coefficients of the block, in the tensor's units; block names from
  :func:`irreptensor_ml.metrics.irrep_blocks`) and one panel per derived scalar
  (:func:`irreptensor_ml.metrics.derived_scalars`, e.g. K_VRH and G_VRH for elastic). Each panel
  shows the y = x line and the MAE.
* :func:`plot_learning_curves` -- train/validation loss per epoch read from the ``metrics.csv``
  written by Lightning's ``CSVLogger``.

matplotlib is used with the non-interactive Agg backend (figures are only written to files), so
this works on headless machines. All functions return the paths they wrote.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import irreptensor as it  # noqa: E402
from irreptensor_ml import metrics as M  # noqa: E402


def _parity_panel(ax: Any, true: np.ndarray, pred: np.ndarray, title: str, unit: str) -> None:
    """Scatter ``pred`` against ``true`` on ``ax`` with the y = x line and the MAE in the title."""
    true, pred = np.ravel(true), np.ravel(pred)
    ok = np.isfinite(true) & np.isfinite(pred)
    true, pred = true[ok], pred[ok]
    if true.size:
        lo = float(min(true.min(), pred.min()))
        hi = float(max(true.max(), pred.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
        ax.scatter(true, pred, s=6, alpha=0.6, edgecolors="none")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        mae = float(np.abs(pred - true).mean())
        ax.set_title(f"{title}  (MAE {mae:.3g}{' ' + unit if unit else ''})", fontsize=9)
    else:
        ax.set_title(f"{title}  (no finite values)", fontsize=9)
    suffix = f" [{unit}]" if unit else ""
    ax.set_xlabel(f"true{suffix}", fontsize=8)
    ax.set_ylabel(f"predicted{suffix}", fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))


def plot_parity(
    pred: Any,
    true: Any,
    property: str,
    path: str | os.PathLike[str],
    *,
    pred_irreps: Any | None = None,
    true_irreps: Any | None = None,
    title: str | None = None,
) -> Path:
    """Write the parity-plot grid of one property to ``path`` (format from the suffix, e.g. .png).

    Args:
        pred, true: Cartesian tensor batches ``(N, 3, ..., 3)`` in physical units (numpy/torch).
        property: ``"elastic"``, ``"dielectric"`` or ``"piezoelectric"``.
        path: output file; parent directories are created.
        pred_irreps, true_irreps: ``(N, dim)`` irreps in physical units; computed with
            ``irreptensor.decompose`` when omitted.
        title: figure title; default the property name and N.

    Returns:
        ``Path(path)``.
    """
    M.check_property(property)
    p, t = M.as_numpy(pred), M.as_numpy(true)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != true shape {t.shape}")
    pi = M.as_numpy(it.decompose(p, property)) if pred_irreps is None else M.as_numpy(pred_irreps)
    ti = M.as_numpy(it.decompose(t, property)) if true_irreps is None else M.as_numpy(true_irreps)
    blocks = M.irrep_blocks(it.irreps(property))
    dp, dt = M.derived_scalars(p, property), M.derived_scalars(t, property)
    names = M.DERIVED_SCALARS[property]
    n_panels = len(blocks) + len(names)
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = list(axes.ravel())
    unit = M.TENSOR_UNITS[property]
    for ax, (name, sl) in zip(flat, blocks):
        _parity_panel(ax, ti[:, sl], pi[:, sl], f"irrep {name}", unit)
    for ax, name in zip(flat[len(blocks):], names):
        _parity_panel(ax, dt[name], dp[name], name, M.DERIVED_UNITS[name])
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{property} (N = {p.shape[0] if p.ndim > 0 else 0})")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def read_epoch_losses(metrics_csv: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch loss curves from a Lightning ``CSVLogger`` ``metrics.csv``.

    Every column whose name contains ``"loss"`` is a curve. Lightning writes one row per logging
    step, with empty cells for metrics not logged in that row; for each epoch the value of a column
    is the LAST non-empty value in that epoch (for ``on_epoch`` metrics that is the epoch mean).
    Columns with both a ``*_step`` and a ``*_epoch`` variant keep only the ``*_epoch`` one.

    Returns:
        ``{column: (epochs, values)}`` for columns with at least one value; arrays of equal length.

    Raises:
        FileNotFoundError: ``metrics_csv`` does not exist.
        ValueError: the file has no ``epoch`` column or no loss column.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "epoch" not in fields:
        raise ValueError(f"{path}: no 'epoch' column (columns: {fields})")
    loss_cols = [c for c in fields if "loss" in c]
    loss_cols = [c for c in loss_cols if not (c.endswith("_step") and c[:-5] + "_epoch" in loss_cols)]
    if not loss_cols:
        raise ValueError(f"{path}: no loss column (columns: {fields})")
    curves: dict[str, dict[int, float]] = {c: {} for c in loss_cols}
    for row in rows:
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        for c in loss_cols:
            v = row.get(c)
            if v not in (None, ""):
                curves[c][epoch] = float(v)
    return {
        c: (np.array(sorted(d), dtype=int), np.array([d[e] for e in sorted(d)], dtype=float))
        for c, d in curves.items()
        if d
    }


def plot_learning_curves(
    metrics_csv: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    log_y: bool = True,
) -> Path:
    """Plot train/val loss per epoch from a Lightning ``metrics.csv`` (see :func:`read_epoch_losses`).

    Args:
        metrics_csv: path of the CSVLogger file.
        path: output image; default ``learning_curves.png`` next to ``metrics_csv``.
        log_y: logarithmic loss axis (used only if all values are positive).

    Returns:
        The path written.
    """
    curves = read_epoch_losses(metrics_csv)
    out = Path(path) if path is not None else Path(metrics_csv).with_name("learning_curves.png")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (epochs, values) in sorted(curves.items()):
        style = "--" if "val" in name else "-"
        ax.plot(epochs, values, style, marker="o", ms=3, label=name)
    positive = all((v > 0).all() for _, v in curves.values())
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(
    predictions: dict[str, dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    metrics_csv: str | os.PathLike[str] | None = None,
    prefix: str = "",
) -> list[Path]:
    """All figures of an evaluation: one parity grid per property, plus learning curves.

    Args:
        predictions: ``{property: {"pred": (N,...), "true": (N,...), "pred_irreps": (N, dim),
            "true_irreps": (N, dim), "kind": str}}`` (irreps entries optional; ``kind``, the tensor
            kind of a part such as ``dielectric_electronic``, defaults to the key), Cartesian,
            physical units.
        out_dir: directory for ``{prefix}parity_<property>.png`` and ``learning_curves.png``.
        metrics_csv: Lightning ``metrics.csv``; learning curves are skipped when ``None`` or the
            file does not exist.
        prefix: file-name prefix, e.g. ``"test_"``.

    Returns:
        Paths written.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for prop, d in predictions.items():
        written.append(
            plot_parity(
                d["pred"], d["true"], d.get("kind", prop), out_dir / f"{prefix}parity_{prop}.png",
                pred_irreps=d.get("pred_irreps"), true_irreps=d.get("true_irreps"),
                title=f"{prefix.strip('_') + ' ' if prefix else ''}{prop} (N = {len(d['true'])})",
            )
        )
    if metrics_csv is not None and Path(metrics_csv).is_file():
        written.append(plot_learning_curves(metrics_csv, out_dir / "learning_curves.png"))
    return written


__all__: Sequence[str] = (
    "plot_parity",
    "read_epoch_losses",
    "plot_learning_curves",
    "plot_run",
)
