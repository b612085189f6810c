"""Tests of irreptensor_ml.plots (parity plots, learning curves from a Lightning CSVLogger)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger
from pymatgen.core.tensors import Tensor

from irreptensor_ml import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _stiffness(rng: np.random.Generator, n: int) -> np.ndarray:
    A = rng.normal(size=(n, 6, 6)) * 20.0
    return np.stack([Tensor.from_voigt(a @ a.T + 50 * np.eye(6)) for a in A])


@pytest.mark.parametrize("prop", ["elastic", "dielectric", "piezoelectric"])
def test_plot_parity_writes_png(tmp_path: Path, prop: str) -> None:
    rng = np.random.default_rng(0)
    if prop == "elastic":
        true = _stiffness(rng, 6)
    elif prop == "dielectric":
        a = rng.normal(size=(6, 3, 3))
        true = a @ a.transpose(0, 2, 1) + np.eye(3)
    else:
        e = rng.normal(size=(6, 3, 3, 3))
        true = 0.5 * (e + e.transpose(0, 1, 3, 2))
    pred = true * 1.05
    out = plots.plot_parity(pred, true, prop, tmp_path / "sub" / f"parity_{prop}.png")
    assert out == tmp_path / "sub" / f"parity_{prop}.png"
    assert _is_png(out)


def test_plot_parity_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pred shape \(2, 3, 3\) != true shape \(3, 3, 3\)"):
        plots.plot_parity(np.zeros((2, 3, 3)), np.zeros((3, 3, 3)), "dielectric", tmp_path / "x.png")
    with pytest.raises(ValueError, match="unknown property 'optical'"):
        plots.plot_parity(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), "optical", tmp_path / "x.png")


def _write_lightning_csv(tmp_path: Path) -> Path:
    """A real CSVLogger metrics.csv: step-level train loss, epoch-level train and val loss."""
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    step = 0
    for epoch in range(3):
        for _ in range(2):
            logger.log_metrics({"train_loss_step": 10.0 / (step + 1), "epoch": epoch}, step=step)
            step += 1
        logger.log_metrics({"val_loss": 5.0 - epoch, "epoch": epoch}, step=step - 1)
        logger.log_metrics({"train_loss_epoch": 4.0 - epoch, "epoch": epoch}, step=step - 1)
    logger.save()
    path = Path(logger.log_dir) / "metrics.csv"
    assert path.is_file()
    return path


def test_read_epoch_losses_from_csvlogger(tmp_path: Path) -> None:
    curves = plots.read_epoch_losses(_write_lightning_csv(tmp_path))
    assert set(curves) == {"train_loss_epoch", "val_loss"}  # _step dropped when _epoch exists
    epochs, values = curves["val_loss"]
    assert epochs.tolist() == [0, 1, 2]
    assert values.tolist() == [5.0, 4.0, 3.0]
    assert curves["train_loss_epoch"][1].tolist() == [4.0, 3.0, 2.0]


def test_plot_learning_curves(tmp_path: Path) -> None:
    csv_path = _write_lightning_csv(tmp_path)
    out = plots.plot_learning_curves(csv_path)
    assert out == csv_path.with_name("learning_curves.png")
    assert _is_png(out)


def test_learning_curve_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        plots.read_epoch_losses(tmp_path / "missing.csv")
    bad = tmp_path / "metrics.csv"
    bad.write_text("step,lr\n0,0.1\n")
    with pytest.raises(ValueError, match="no 'epoch' column"):
        plots.read_epoch_losses(bad)
    bad.write_text("epoch,step,lr\n0,0,0.1\n")
    with pytest.raises(ValueError, match="no loss column"):
        plots.read_epoch_losses(bad)


def test_plot_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 3, 3))
    eps = a @ a.transpose(0, 2, 1) + np.eye(3)
    csv_path = _write_lightning_csv(tmp_path)
    written = plots.plot_run(
        {"dielectric": {"pred": eps + 0.1, "true": eps}}, tmp_path / "plots",
        metrics_csv=csv_path, prefix="test_",
    )
    assert [p.name for p in written] == ["test_parity_dielectric.png", "learning_curves.png"]
    assert all(_is_png(p) for p in written)
