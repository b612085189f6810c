"""Train a tensor predictor with Lightning, resumably, and export a weights-only model.

``fit(config, run_dir)`` writes into ``run_dir``:

* ``config.yaml``: the resolved configuration (defaults + user file + overrides);
* ``run_info.json``: configuration, data-file SHA-256 hashes, the train/val/test split of every
  material, data summary, package versions, hardware, start/end times, epochs, best score;
* ``checkpoints/last.ckpt`` (every epoch) and ``checkpoints/best-*.ckpt`` (lowest ``val/loss``);
* ``metrics.csv`` (Lightning :class:`~lightning.pytorch.loggers.CSVLogger`; the history of an
  interrupted run is kept when it resumes) and ``hparams.yaml``;
* ``model.pt``: weights-only export of the best checkpoint (see :mod:`.checkpoint`).

If ``run_dir/checkpoints/last.ckpt`` exists the run resumes from it (model, optimizer, scheduler,
epoch counter, early-stopping and checkpoint callbacks), so an interrupted job restarted with the
same command continues where it stopped; raising ``trainer.max_epochs`` extends a finished run.

Multi-GPU / multi-node training uses Lightning's DDP: set ``trainer.strategy: ddp``,
``trainer.devices`` and ``trainer.num_nodes`` (launch one process per node, e.g. with
``srun``/``torchrun``; on one machine Lightning spawns the extra processes itself by re-running
the command, so use ``python -m irreptensor_ml.train`` or a script, not an interactive session).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger

from irreptensor_ml.data.datamodule import TensorDataModule
from irreptensor_ml.train.checkpoint import MODEL_FILE, save_model
from irreptensor_ml.train.config import load_config
from irreptensor_ml.train.module import TensorLightningModule
from irreptensor_ml.train.provenance import (
    hardware_info,
    merge_metrics_csv,
    package_versions,
    python_command,
    write_json,
    write_yaml,
)

__all__ = ["fit", "build_trainer", "MONITOR"]

#: default metric watched by checkpointing and early stopping (``TensorLightningModule.monitor``).
MONITOR = "val/loss"
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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_trainer(config: Mapping[str, Any], run_dir: Path, monitor: str = MONITOR) -> lightning.Trainer:
    """Lightning ``Trainer`` with checkpointing (``save_last``, best by ``monitor``), early
    stopping on ``monitor``, LR monitor, progress bar and a CSV logger writing
    ``run_dir/metrics.csv``."""
    tcfg = dict(config["trainer"])
    callbacks: list[lightning.Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-{epoch:04d}",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            save_last=True,
        ),
        EarlyStopping(monitor=monitor, mode="min", patience=int(tcfg["early_stopping_patience"])),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if tcfg.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(tcfg.get("log_every_n_steps", 10)))))
    kwargs = {k: tcfg[k] for k in _TRAINER_PASSTHROUGH if tcfg.get(k) is not None}
    return lightning.Trainer(
        max_epochs=int(tcfg["max_epochs"]),
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        default_root_dir=str(run_dir),
        **kwargs,
    )


def fit(
    config: Mapping[str, Any] | str | os.PathLike[str] | None,
    run_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    datamodule: TensorDataModule | None = None,
    resume: bool = True,
) -> Path:
    """Train (or resume) a run and return the path of its exported ``model.pt``.

    Args:
        config: a config dict, a YAML path, a shipped config name (``"default"``, ``"tiny"``), or
            ``None`` for the defaults; merged over ``configs/default.yaml``.
        run_dir: output directory (created).
        overrides: ``"section.key=value"`` strings applied last.
        datamodule: an already built data module to use instead of one from ``config["data"]``
            (its settings are what gets recorded).
        resume: continue from ``run_dir/checkpoints/last.ckpt`` when it exists.
    """
    cfg = load_config(config, overrides)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = cfg["trainer"].get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    lightning.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    dm = datamodule if datamodule is not None else TensorDataModule(cfg["data"])
    dm.prepare_data()
    dm.setup("fit")
    if datamodule is not None:
        cfg["data"] = dm.config.to_dict()

    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    module = TensorLightningModule(
        irreps=dm.irreps,
        model=cfg["model"],
        loss=cfg["loss"],
        optim=cfg["optim"],
        max_epochs=int(cfg["trainer"]["max_epochs"]),
        run_config=cfg,
        train_targets={p: dm.train_dataset.targets(p) for p in dm.irreps},
    )
    # the effective trunk (a pretrained trunk brings its own settings) must match the graphs
    if module.model.trunk.cutoff != float(cfg["data"]["cutoff"]):
        raise ValueError(
            f"model cutoff {module.model.trunk.cutoff} differs from data.cutoff {cfg['data']['cutoff']}"
            " (a pretrained trunk keeps the cutoff it was trained with)"
        )
    cfg["model"]["trunk"] = dict(module.model.trunk.config)
    trainer = build_trainer(cfg, run_dir, module.monitor)

    info_path = run_dir / "run_info.json"
    metrics_path = run_dir / "metrics.csv"
    previous_metrics = metrics_path.read_text() if ckpt_path and metrics_path.is_file() else ""
    started = time.time()
    info: dict[str, Any] = {
        "started": _now(),
        "resumed_from": ckpt_path,
        "command": python_command(),
        "config": cfg,
        "data": {
            "hashes": dm.data_hashes(),
            "summary": dm.summary(),
            "split": dict(sorted(dm.split.items())),
        },
        "model": {
            "num_parameters": sum(p.numel() for p in module.model.parameters()),
            "num_trunk_parameters": sum(p.numel() for p in module.model.trunk.parameters()),
            "irreps": dict(dm.irreps),
        },
        "versions": package_versions(),
        "hardware": hardware_info(),
        "status": "running",
    }
    if ckpt_path and info_path.is_file():  # keep a short record of the earlier sessions
        try:
            old = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            old = {}
        keep = ("started", "finished", "resumed_from", "epochs_completed", "status", "wall_time_s")
        info["history"] = list(old.get("history", [])) + [{k: old.get(k) for k in keep}]
    if trainer.is_global_zero:
        write_yaml(run_dir / "config.yaml", cfg)
        write_json(info_path, info)

    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)

    model_path = run_dir / MODEL_FILE
    if trainer.is_global_zero:
        if previous_metrics:
            merge_metrics_csv(previous_metrics, metrics_path)
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        best_score = ckpt_cb.best_model_score if ckpt_cb is not None else None
        export_info = {
            "epochs_completed": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "best_checkpoint": best or None,
            "best_val_loss": None if best_score is None else float(best_score),
        }
        save_model(model_path, module.model, cfg, export_info)
        info.update(
            export_info,
            finished=_now(),
            wall_time_s=round(time.time() - started, 3),
            model_file=str(model_path),
            status="finished",
        )
        write_json(info_path, info)
    return model_path
