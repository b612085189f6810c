"""The Lightning ``Trainer`` of every training of irreptensor_ml, and inference with ``Trainer.predict``.

:func:`build_trainer` is the one trainer builder: ``irreptensor-ml train``
(:func:`irreptensor_ml.train.fit.fit`, a resumable run directory with logs) and the runs of the
transfer study (:func:`irreptensor_ml.transfer.runner.execute_run`, in-process, best weights only)
both use it, with options for what differs.  Model selection is Lightning's ``ModelCheckpoint``
(lowest monitored value, ``save_top_k=1``) and ``EarlyStopping`` on the same metric;
:class:`MonitorHistory` keeps the monitored value of every epoch.

:func:`predict_batches` runs a model over batches with ``Trainer.predict`` (no logger, no
checkpointing, no progress bar, on the model's own device): the evaluation passes of
:mod:`irreptensor_ml.evaluate` and of the transfer study use it.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import lightning
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from irreptensor_ml.train.checkpoint import CHECKPOINT_DIR
from irreptensor_ml.train.provenance import write_metrics_csv

__all__ = ["MONITOR", "MonitorHistory", "build_trainer", "predict_batches"]

#: default metric watched by checkpointing and early stopping (``TensorLightningModule.monitor``).
MONITOR = "val/loss"
#: ``trainer`` config keys passed to ``lightning.Trainer`` as they are (when not null).
_TRAINER_PASSTHROUGH = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "gradient_clip_val",
    "log_every_n_steps",
    "enable_progress_bar",
    "deterministic",
    "limit_train_batches",
    "limit_val_batches",
)


class _RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that follows a moved run directory.

    Lightning keeps the best/last bookkeeping of a checkpoint only if its recorded ``dirpath``
    is the current one; after a move it forgets it (the old best file is never replaced, the
    next ``last.ckpt`` becomes ``last-v1.ckpt``).  Here paths recorded under the old folder are
    mapped into the current one, since a run only resumes from its own checkpoints.  The state
    key is ``ModelCheckpoint``'s, so checkpoints written by either class resume alike."""

    @property
    def state_key(self) -> str:
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.normpath(old) != os.path.normpath(self.dirpath):
            def moved(path: Any) -> Any:
                if not isinstance(path, str) or not path:
                    return path
                rel = os.path.relpath(path, old)
                return path if rel.startswith("..") else os.path.join(self.dirpath, rel)

            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = moved(state_dict[key])
            if "best_k_models" in state_dict:
                state_dict["best_k_models"] = {moved(k): v for k, v in state_dict["best_k_models"].items()}
        super().load_state_dict(state_dict)


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, except that ``metrics.csv`` holds the earlier sessions' rows
    followed by this session's and is replaced atomically at each save: Lightning's writer
    deletes the file when a session starts and appends to it, which loses the history of a
    resume that does not end normally."""

    def __init__(self, log_dir: str, history: Sequence[Mapping[str, Any]]) -> None:
        self._rows: list[Mapping[str, Any]] = list(history)
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep the earlier ``metrics.csv``: the first save replaces it, merged."""

    def save(self) -> None:
        if self.metrics:
            self._rows.extend(self.metrics)
            self.metrics = []
            write_metrics_csv(self.metrics_file_path, self._rows)


class _HistoryCSVLogger(CSVLogger):
    """CSV logger of ``run_dir/metrics.csv`` (and ``hparams.yaml``) that keeps ``history`` (the
    rows of earlier sessions) and saves after every checkpoint, so the file on disk is never
    older than the newest checkpoint."""

    def __init__(self, run_dir: Path, history: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")
        self._history = list(history)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._history)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


class MonitorHistory(lightning.Callback):
    """The value of ``monitor`` after every validation of the training (sanity checks left out),
    in :attr:`values`, as Python floats (NaN and inf kept)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.values: list[float] = []

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ValueError(f"metric {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}")
        self.values.append(float(value))


def build_trainer(
    config: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    monitor: str = MONITOR,
    history: Sequence[Mapping[str, Any]] = (),
    *,
    max_epochs: int | None = None,
    patience: int | None = None,
    logging: bool = True,
    resumable: bool = True,
    progress_bar: bool | None = None,
    callbacks: Sequence[lightning.Callback] = (),
    **trainer_kwargs: Any,
) -> lightning.Trainer:
    """The Lightning ``Trainer`` of a training: checkpointing of the best epoch by ``monitor``
    (``ModelCheckpoint``, ``mode="min"``, ``save_top_k=1``, ``run_dir/checkpoints/best-*.ckpt``)
    and early stopping on ``monitor``; the ``trainer`` section of ``config`` gives the epochs,
    the patience and the Lightning settings (accelerator, devices, precision, ...).

    Args:
        config: resolved training config (its ``trainer`` section is read).
        run_dir: the run's directory: checkpoints go to ``run_dir/checkpoints``, logs to
            ``run_dir/metrics.csv``.
        monitor: logged metric that selects the best epoch and stops the training.
        history: ``metrics.csv`` rows of earlier sessions of a resumed run (with ``logging``).
        max_epochs, patience: replace ``trainer.max_epochs`` / ``trainer.early_stopping_patience``.
        logging: CSV logger (``run_dir/metrics.csv`` after ``history``, ``hparams.yaml``) and
            learning-rate monitor; ``False``: no logger.
        resumable: also ``checkpoints/last.ckpt`` every epoch, and full checkpoints (optimizer,
            schedulers, callbacks) that a run resumes from; ``False``: the best epoch's weights only.
        progress_bar: show a progress bar (default ``trainer.enable_progress_bar``, else on).
        callbacks: more callbacks (e.g. :class:`MonitorHistory`).
        trainer_kwargs: ``lightning.Trainer`` arguments that replace those from the config (e.g.
            ``devices=1``, ``num_sanity_val_steps=0``, ``enable_model_summary=False``).
    """
    tcfg = dict(config["trainer"])
    run_dir = Path(run_dir)
    epochs = int(tcfg["max_epochs"] if max_epochs is None else max_epochs)
    wait = int(tcfg["early_stopping_patience"] if patience is None else patience)
    show_bar = bool(tcfg.get("enable_progress_bar", True) if progress_bar is None else progress_bar)
    all_callbacks: list[lightning.Callback] = [
        _RunCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename="best-{epoch:04d}",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            save_last=resumable,
            save_weights_only=not resumable,
            enable_version_counter=False,  # last.ckpt is replaced, never joined by last-v1.ckpt
        ),
        EarlyStopping(monitor=monitor, mode="min", patience=wait),
    ]
    if logging:
        all_callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if show_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(tcfg.get("log_every_n_steps") or 10))))
    all_callbacks.extend(callbacks)
    kwargs = {k: tcfg[k] for k in _TRAINER_PASSTHROUGH if tcfg.get(k) is not None}
    kwargs.update(
        max_epochs=epochs,
        callbacks=all_callbacks,
        logger=_HistoryCSVLogger(run_dir, history) if logging else False,
        default_root_dir=str(run_dir),
        enable_progress_bar=show_bar,
    )
    kwargs.update(trainer_kwargs)
    return lightning.Trainer(**kwargs)


# ------------------------------------------------------------------------------ inference


class _PredictModule(lightning.LightningModule):
    """A model wrapped for ``Trainer.predict``: ``predict_step`` is ``step(model, batch)``."""

    def __init__(self, model: torch.nn.Module, step: Callable[[torch.nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self._step = step

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._step(self.model, batch)


class _Batches(torch.utils.data.IterableDataset):
    """Any iterable of ready batches as a dataset (a ``DataLoader`` with ``batch_size=None``
    yields them unchanged): ``Trainer.predict`` would read a plain list as several loaders."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


def _unchanged(batch: Any) -> Any:
    return batch


#: Lightning warnings that say nothing about a training or an evaluation pass here (a loader
#: without workers is the normal case; a CPU model on a GPU machine is the caller's choice).
LIGHTNING_NOISE = (".*does not have many workers.*", ".*GPU available but not used.*", ".*LeafSpec.*",
                   ".*litlogger.*")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's device report (``GPU available: ...``) and the warnings of
    :data:`LIGHTNING_NOISE` for the block."""
    log = pylogging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(max(level, pylogging.WARNING))
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        log.setLevel(level)


def predict_batches(
    model: torch.nn.Module,
    batches: Iterable[Any],
    step: Callable[[torch.nn.Module, Any], Any],
) -> list[Any]:
    """``[step(model, batch) for batch in batches]`` with ``Trainer.predict``: gradients off
    (``torch.no_grad``), the model in eval mode (its mode is restored afterwards), each batch moved
    to the model's device.  No logger, checkpoint or progress bar; Lightning's device report is
    not printed.  ``batches`` is a ``DataLoader`` or any iterable of batches."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if device.type == "cpu":
        accelerator, devices = "cpu", 1
    else:
        accelerator, devices = device.type, [device.index or 0]
    if not isinstance(batches, torch.utils.data.DataLoader):
        batches = torch.utils.data.DataLoader(_Batches(batches), batch_size=None, collate_fn=_unchanged)
    was_training = model.training
    try:
        with _quiet_lightning():
            trainer = lightning.Trainer(
                accelerator=accelerator,
                devices=devices,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                inference_mode=False,  # torch.no_grad: no inference tensors left in the model's caches
            )
            out = trainer.predict(_PredictModule(model, step), dataloaders=batches, return_predictions=True)
    finally:
        model.train(was_training)
    return list(out or [])
