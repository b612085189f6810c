"""Train a tensor predictor with Lightning, resumably, and export a weights-only model.

``fit(config, run_dir)`` writes into ``run_dir``:

* ``config.yaml``: the resolved configuration (defaults + user file + overrides);
* ``run_info.json``: configuration, data-file SHA-256 hashes, the train/val/test split of every
  material, data summary, package versions, hardware, start/end times, epochs, best score;
* ``checkpoints/last.ckpt`` (every epoch) and ``checkpoints/best-*.ckpt`` (lowest ``val/loss``);
* ``metrics.csv`` (Lightning's CSV logger): the whole history of the run, earlier sessions
  first, replaced atomically at every checkpoint, so no interruption loses rows;
  ``hparams.yaml``;
* ``model.pt``: weights-only export of the best checkpoint (see :mod:`.checkpoint`);
* ``.lock``: held (``flock``) while a training runs; a second training into the same directory
  stops with :class:`RunDirectoryLocked`.  The lock dies with its process, so it is never stale.

If ``run_dir/checkpoints`` holds a checkpoint the run resumes from the one with the most steps
(model, optimizer, scheduler, epoch counter, early-stopping and checkpoint callbacks), so an
interrupted job restarted with the same command continues where it stopped, also after the run
directory was moved; raising ``trainer.max_epochs`` extends a finished run.  Checkpoints are
verified first: a truncated or foreign one is named in a one-line :class:`ModelFileError`.

A run stopped by SIGTERM records ``status: "interrupted"`` in ``run_info.json`` and raises
:class:`TrainingInterrupted` (exit status 143), wherever the signal arrives: while the data
loads, during the training (Lightning stops at the next batch), after the last epoch or during
the export of ``model.pt`` (which is then not written).  One that fails records ``"failed"``
and its error.  Without ``model.pt`` a run directory is refused by ``load_model`` (and so by
``predict``/``evaluate``) until it finishes.

Multi-GPU / multi-node training uses Lightning's DDP: set ``trainer.strategy: ddp``,
``trainer.devices`` and ``trainer.num_nodes`` (launch one process per node, e.g. with
``srun``/``torchrun``; on one machine Lightning spawns the extra processes itself by re-running
the command, so use ``python -m irreptensor_ml.train`` or a script, not an interactive session).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from irreptensor_ml.data.datamodule import TensorDataModule
from irreptensor_ml.train.checkpoint import (
    MODEL_FILE,
    load_model,
    newest_checkpoint,
    save_model,
)
from irreptensor_ml.train.config import load_config
from irreptensor_ml.train.module import TensorLightningModule
from irreptensor_ml.train.provenance import (
    hardware_info,
    package_versions,
    python_command,
    read_metrics_csv,
    write_json,
    write_yaml,
)
from irreptensor_ml.train.trainer import MONITOR, build_trainer  # noqa: F401  (re-exported)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run-directory lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["fit", "build_trainer", "MONITOR", "RunDirectoryLocked", "TrainingInterrupted", "EXIT_SIGTERM"]

#: exit status of a training stopped by SIGTERM (the shell's 128 + signal number).
EXIT_SIGTERM = 128 + int(signal.SIGTERM)
LOCK_FILE = ".lock"


class RunDirectoryLocked(RuntimeError):
    """Another training is writing into the run directory (it holds ``run_dir/.lock``)."""


class TrainingInterrupted(SystemExit):
    """SIGTERM stopped the training: ``run_info.json`` says ``"interrupted"``, no ``model.pt``
    was exported by this session, and the same command resumes from the last checkpoint.  A
    ``SystemExit`` with code :data:`EXIT_SIGTERM`, so an uncaught one exits non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_SIGTERM)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pretrained_trunk(model_cfg: dict[str, Any]) -> torch.nn.Module | None:
    """Transfer learning (``model.pretrained_trunk``: a ``model.pt``, ``.ckpt`` or run directory):
    the pretrained model's trunk, whose settings replace ``model_cfg["trunk"]`` (in place; the
    module records them, so its checkpoints restore without the pretrained file); ``None``
    without ``pretrained_trunk``."""
    if not model_cfg.get("pretrained_trunk"):
        return None
    pretrained, _, _ = load_model(model_cfg["pretrained_trunk"])
    model_cfg["trunk"] = dict(pretrained.trunk.config)
    return pretrained.trunk


def _is_rank_zero_process() -> bool:
    """Whether this process is global rank 0 by its environment: every rank variable a DDP
    launcher sets (Lightning's workers, torchrun, SLURM, other nodes) is unset or 0.  Only this
    process locks the run directory; the others run under its lock."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return all(os.environ.get(n, "0").strip() in ("", "0") for n in names)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``run_dir/.lock`` (released when the block or the process
    ends, so a killed training leaves no stale lock); :class:`RunDirectoryLocked` if another
    process holds it."""
    if fcntl is None or not _is_rank_zero_process():
        yield
        return
    path = run_dir / LOCK_FILE
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = " ".join(fh.read().split())
            raise RunDirectoryLocked(
                f"run directory {str(run_dir)!r} is in use by another training "
                f"({holder or 'see ' + str(path)}); wait for it to end or choose another run directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _SigtermGuard:
    """SIGTERM handler of a training (installed by :func:`_sigterm_guard`): raises Lightning's
    ``SIGTERMException`` in the main thread, so that a signal that arrives outside Lightning's
    own handling (data loading, model building, after the last epoch, the export of
    ``model.pt``) stops the run the way one during training does, recorded and non-zero.

    Inside ``trainer.fit`` Lightning installs its own handler, which calls this one after
    flagging the signal; it is then left to Lightning (stop at the next batch).  Once a stop is
    being recorded (:attr:`quiet`), further SIGTERMs are ignored so that the record is written."""

    def __init__(self) -> None:
        self.quiet = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.quiet or signal.getsignal(signal.SIGTERM) is not self:
            return
        self.quiet = True
        raise SIGTERMException()


@contextlib.contextmanager
def _sigterm_guard() -> Iterator[_SigtermGuard]:
    """Install a :class:`_SigtermGuard` for the block (main thread only; elsewhere signals
    cannot be handled and the guard does nothing), then restore the previous handler."""
    guard = _SigtermGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


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
        resume: continue from the newest checkpoint of ``run_dir/checkpoints`` when there is one.

    Raises:
        RunDirectoryLocked: another training is writing into ``run_dir``.
        ModelFileError: a checkpoint to resume from is unreadable (named in the message).
        TrainingInterrupted: SIGTERM stopped the training (recorded in ``run_info.json``).
    """
    cfg = load_config(config, overrides)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        return _fit_locked(cfg, run_dir, datamodule, resume)


def _fit_locked(
    cfg: dict[str, Any], run_dir: Path, datamodule: TensorDataModule | None, resume: bool
) -> Path:
    """:func:`fit` once ``run_dir`` is locked."""
    threads = cfg["trainer"].get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    lightning.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    # verify what a resume starts from before the (slow) data loading
    found = newest_checkpoint(run_dir) if resume else None
    ckpt_path = str(found[0]) if found else None
    info_path = run_dir / "run_info.json"
    metrics_path = run_dir / "metrics.csv"
    history = read_metrics_csv(metrics_path, max_epoch=found[1]["epoch"]) if found else []

    started = time.time()
    info: dict[str, Any] = {
        "started": _now(),
        "resumed_from": ckpt_path,
        "command": python_command(),
        "pid": os.getpid(),
        "config": cfg,
    }
    sessions: list[dict[str, Any]] | None = None
    if ckpt_path and info_path.is_file():  # keep a short record of the earlier sessions
        try:
            old = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            old = {}
        keep = ("started", "finished", "resumed_from", "epochs_completed", "status", "wall_time_s")
        sessions = list(old.get("history", [])) + [{k: old.get(k) for k in keep}]

    trainer: lightning.Trainer | None = None
    running = False  # run_info.json says "running"
    with _sigterm_guard() as guard:
        try:
            dm = datamodule if datamodule is not None else TensorDataModule(cfg["data"])
            dm.prepare_data()
            dm.setup("fit")
            if datamodule is not None:
                cfg["data"] = dm.config.to_dict()

            trunk_state = _pretrained_trunk(cfg["model"])
            module = TensorLightningModule(
                irreps=dm.irreps,
                model=cfg["model"],
                loss=cfg["loss"],
                optim=cfg["optim"],
                max_epochs=int(cfg["trainer"]["max_epochs"]),
                run_config=cfg,
                train_targets=dm.training_targets(),
                trunk_state=trunk_state,
            )
            # the effective trunk (a pretrained trunk brings its own settings) must match the graphs
            if module.model.trunk.cutoff != float(cfg["data"]["cutoff"]):
                raise ValueError(
                    f"model cutoff {module.model.trunk.cutoff} differs from data.cutoff {cfg['data']['cutoff']}"
                    " (a pretrained trunk keeps the cutoff it was trained with)"
                )
            cfg["model"]["trunk"] = dict(module.model.trunk.config)
            trainer = build_trainer(cfg, run_dir, module.monitor, history)

            started = time.time()  # "started" and wall_time_s count from here, after the data loading
            info.update(
                started=_now(),
                data={
                    "hashes": dm.data_hashes(),
                    "summary": dm.summary(),
                    "split": dict(sorted(dm.split.items())),
                },
                model={
                    "num_parameters": sum(p.numel() for p in module.model.parameters()),
                    "num_trunk_parameters": sum(p.numel() for p in module.model.trunk.parameters()),
                    "irreps": dict(dm.irreps),
                },
                versions=package_versions(),
                hardware=hardware_info(),
                status="running",
            )
            if sessions is not None:
                info["history"] = sessions
            if trainer.is_global_zero:
                write_yaml(run_dir / "config.yaml", cfg)
                write_json(info_path, info)
                running = True

            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
            if trainer.received_sigterm:  # after the last batch Lightning only takes note
                raise SIGTERMException()

            model_path = run_dir / MODEL_FILE
            if trainer.is_global_zero:
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
        except BaseException as exc:
            guard.quiet = True  # a second SIGTERM must not interrupt the record
            sigterm = isinstance(exc, SIGTERMException)
            rank_zero = trainer.is_global_zero if trainer is not None else _is_rank_zero_process()
            if rank_zero and (running or sigterm):
                if sessions is not None:
                    info.setdefault("history", sessions)
                _record_stop(info_path, info, trainer, started, exc)
            if sigterm:
                raise TrainingInterrupted(_interrupted_message(run_dir, trainer, running, ckpt_path)) from exc
            raise


def _interrupted_message(
    run_dir: Path, trainer: lightning.Trainer | None, running: bool, resumed_from: str | None
) -> str:
    """One line for a training stopped by SIGTERM: when, what was (not) written, what next."""
    if trainer is None or not running:
        when = "before its training started"
    elif int(trainer.current_epoch) >= int(trainer.max_epochs or 0) > 0:
        when = "after its last epoch"
    else:
        when = f"after {int(trainer.current_epoch)} epoch(s)"
    ckpt_cb = trainer.checkpoint_callback if trainer is not None else None
    resumable = bool(resumed_from or (ckpt_cb is not None and ckpt_cb.last_model_path))
    return (
        f"training in {str(run_dir)!r} interrupted by SIGTERM {when}; no {MODEL_FILE} exported, "
        "run_info.json status 'interrupted'; the same command "
        + ("resumes from the last checkpoint" if resumable else "starts it again")
    )


def _record_stop(
    info_path: Path,
    info: dict[str, Any],
    trainer: lightning.Trainer | None,
    started: float,
    exc: BaseException,
) -> None:
    """Write ``run_info.json`` for a training that did not return: status ``"interrupted"``
    (SIGTERM, Ctrl-C, another exit) or ``"failed"`` with the error's first line.  ``trainer``
    is ``None`` when the stop came before it was built."""
    stopped = isinstance(exc, (SystemExit, KeyboardInterrupt))
    info.update(
        status="interrupted" if stopped else "failed",
        stopped=_now(),
        wall_time_s=round(time.time() - started, 3),
    )
    if trainer is not None:
        ckpt_cb = trainer.checkpoint_callback
        info.update(
            epochs_completed=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            last_checkpoint=(ckpt_cb.last_model_path or None) if ckpt_cb is not None else None,
        )
    if isinstance(exc, SIGTERMException):
        info["signal"] = "SIGTERM"
    elif isinstance(exc, SystemExit):
        info["exit_code"] = exc.code  # Lightning turns Ctrl-C into sys.exit(1)
    if not stopped:
        first = str(exc).splitlines()[0] if str(exc) else ""
        info["error"] = f"{type(exc).__name__}: {first}".rstrip(": ")
    write_json(info_path, info)
