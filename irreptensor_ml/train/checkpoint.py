"""Weights-only model files: save a trained predictor, load it back safely.

``model.pt`` is a ``torch.save`` of a dict holding only tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(weights_only=True)`` (no arbitrary pickled objects):

    {"format": "irreptensor_ml.model", "format_version": 2,
     "model_config": TensorPredictor.config,          # architecture incl. output transforms
     "state_dict": TensorPredictor.state_dict(),      # weights + normalization buffers
     "config": full training configuration, "info": {epoch, val_loss, ...}}

The model is one object: its output maps hold the normalization and output transform, and its
forward returns physical units.  Files of format 1 (normalizers stored beside the model, linear
outputs) and Lightning checkpoints of that time are converted on load.
:func:`load_model` also accepts a Lightning checkpoint (``*.ckpt``) written by
:class:`~irreptensor_ml.train.module.TensorLightningModule` or a finished run directory (one
with ``model.pt``; an unfinished run's partial weights are used only when its checkpoint is
named explicitly).

A file that cannot be used (not a torch file, truncated, pickled objects, missing keys, weights
that do not fit the architecture) raises :class:`ModelFileError`: one line naming the file and
the fault, never advice to load unsafely.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from irreptensor_ml.atomic import atomic_torch_save
from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.model import TensorPredictor

__all__ = [
    "MODEL_FILE",
    "FORMAT",
    "ModelFileError",
    "UnfinishedRunError",
    "save_model",
    "load_model",
    "resolve_model_path",
    "read_torch_file",
    "read_checkpoint",
    "newest_checkpoint",
]

MODEL_FILE = "model.pt"
FORMAT = "irreptensor_ml.model"
FORMAT_VERSION = 2
CHECKPOINT_DIR = "checkpoints"


class ModelFileError(ValueError):
    """A model file, checkpoint or run directory that cannot be used.  The message is one line
    naming the file and the fault (the CLI prints it without a traceback)."""


class UnfinishedRunError(ModelFileError):
    """A run directory without ``model.pt``: its training was stopped or is still running."""


def save_model(
    path: str | os.PathLike[str],
    model: TensorPredictor,
    config: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write the weights-only model file (atomically: temp file + rename); returns its path.

    ``ValueError`` (and nothing written) when a weight or buffer is not finite: a NaN model
    is never exported."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"save_model: refusing to write {str(path)!r}: non-finite values in {len(bad)} tensor(s) "
            f"({', '.join(bad[:5])}); the training diverged or its data hold a bad record"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config,
        "state_dict": state,
        "config": dict(config or {}),
        "info": dict(info or {}),
    }
    return atomic_torch_save(path, payload)


def _run_status(run_dir: Path) -> str | None:
    """``status`` of ``run_dir/run_info.json`` (``None`` if absent or unreadable)."""
    try:
        return json.loads((run_dir / "run_info.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """A file resolves to itself, a run directory to its ``model.pt``.

    A run directory without ``model.pt`` but with checkpoints, or with a ``run_info.json``
    (stopped before its first checkpoint), is an unfinished training (stopped, crashed or still
    running): :class:`UnfinishedRunError`, since its partial weights must not pass for a trained
    model; naming a checkpoint file uses it.  A
    ``model.pt`` beside a ``run_info.json`` whose status is not ``finished`` is the export of
    an earlier session of a resumed run: it loads, with a warning."""
    path = Path(path)
    if path.is_dir():
        model = path / MODEL_FILE
        status = _run_status(path)
        if model.is_file():
            if status not in (None, "finished"):
                warnings.warn(
                    f"run directory {str(path)!r}: run_info.json says {status!r}; {MODEL_FILE} is the "
                    "model of an earlier, finished session of this resumed run",
                    UserWarning, stacklevel=3,
                )
            return model
        ckpts = sorted((path / CHECKPOINT_DIR).glob("*.ckpt"))
        if ckpts:
            last = path / CHECKPOINT_DIR / "last.ckpt"
            raise UnfinishedRunError(
                f"run directory {str(path)!r} has no {MODEL_FILE}: its training has not finished "
                f"(run_info.json status: {status!r}); resume the training to export the model, or "
                f"pass a checkpoint such as {str(last if last.is_file() else ckpts[-1])!r} "
                "explicitly to use its partial weights"
            )
        if status is not None:  # e.g. stopped before its first checkpoint
            raise UnfinishedRunError(
                f"run directory {str(path)!r} has no {MODEL_FILE}: its training has not finished "
                f"(run_info.json status: {status!r}) and left no checkpoint; train it again"
            )
        raise ModelFileError(f"run directory {str(path)!r} has neither {MODEL_FILE} nor checkpoints/last.ckpt")
    if not path.is_file():
        raise ModelFileError(f"model path {str(path)!r} does not exist")
    return path


def read_torch_file(path: str | os.PathLike[str], what: str = "model file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is a one-line
    :class:`ModelFileError` naming ``what`` and the file (never torch's advice to load with
    ``weights_only=False``, which would run arbitrary pickled code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad bytes
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            detail = f"a pickled {found.group(1)}" if found else "a plain Python pickle"
            raise ModelFileError(
                f"{what} {str(path)!r} holds {detail} and is refused: only weights-only files "
                "(tensors, numbers, strings, lists, dicts) are loaded"
            ) from None
        raise ModelFileError(
            f"{what} {str(path)!r} is not a readable torch file (truncated, corrupt or another "
            f"format: {type(exc).__name__})"
        ) from None


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning checkpoint, verified before a run resumes from it: it loads weights-only and
    holds ``state_dict``, ``epoch`` and ``global_step``.  :class:`ModelFileError` otherwise,
    naming the file and suggesting to delete it (the run then resumes from the newest other
    checkpoint of its folder)."""
    path = Path(path)
    hint = (f"delete or move it away to resume from the newest other checkpoint in {str(path.parent)!r}, "
            "or train into a new run directory")
    try:
        ckpt = read_torch_file(path, "checkpoint")
    except ModelFileError as exc:
        raise ModelFileError(f"cannot resume: {exc}; {hint}") from None
    missing = [k for k in ("state_dict", "epoch", "global_step") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ModelFileError(
            f"cannot resume: checkpoint {str(path)!r} is not a Lightning training checkpoint "
            f"(lacks {', '.join(missing)}); {hint}"
        )
    return ckpt


def newest_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, int]] | None:
    """``(path, {"epoch", "global_step"})`` of the checkpoint of ``run_dir/checkpoints`` with
    the most training steps (ties: ``last*`` first, then the newest file), each verified with
    :func:`read_checkpoint`; ``None`` if the folder holds none.  Only the run's own folder
    counts, so a moved or copied run directory resumes from its own newest state, also beside
    ``last-v1.ckpt`` files left by older versions."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    ranked = []
    for path in sorted(folder.glob("*.ckpt")):
        ckpt = read_checkpoint(path)
        meta = {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt["global_step"])}
        del ckpt
        key = (meta["global_step"], meta["epoch"], path.name.startswith("last"), path.stat().st_mtime)
        ranked.append((key, path, meta))
    if not ranked:
        return None
    _, path, meta = max(ranked, key=lambda r: r[0])
    return path, meta


def _build(model_config: Mapping[str, Any], dtype: torch.dtype | None) -> TensorPredictor:
    """Build the architecture, under ``dtype`` as default dtype so that e3nn's constant buffers
    (Clebsch-Gordan coefficients) are computed at that precision."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        if "ensemble" in model_config:
            from irreptensor_ml.model.ensemble import TensorEnsemble

            return TensorEnsemble.from_config(model_config)
        return TensorPredictor.from_config(model_config)
    finally:
        torch.set_default_dtype(previous)


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[TensorPredictor, dict[str, IrrepNormalizer], dict[str, Any]]:
    """Load ``(TensorPredictor in eval mode, {prop: latent IrrepNormalizer}, training config)``.

    The model returns physical units by itself; the normalizers are copies of its output maps'
    buffers, for inspection only.

    Args:
        path: ``model.pt``, a Lightning ``.ckpt`` of :class:`TensorLightningModule`, or a
            finished run directory.  Always read with ``torch.load(weights_only=True)``.
        map_location: device of the returned model.
        dtype: floating dtype of the returned model (default: as saved, normally float32).

    Raises:
        ModelFileError: (a ``ValueError``) the path is missing, an unfinished run
            (:class:`UnfinishedRunError`) or not a usable model file; one line naming it.
    """
    path = resolve_model_path(path)
    model_config, state, normalizer_states, config = _read_model_payload(path)
    where = f"model file {str(path)!r}"
    saved_dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    try:
        model = _build(model_config, dtype or saved_dtype)
        if normalizer_states is not None:
            # format 1: linear outputs whose normalizers were stored beside the model
            for p, norm_state in normalizer_states.items():
                model.outputs[p].load_normalizer(norm_state)
            state = {**{k: v for k, v in model.state_dict().items() if k.startswith("outputs.")}, **state}
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{where}: its model_config does not describe a model ({reason})") from None
    _check_state(where, model, state)
    model.load_state_dict(state)
    model = model.to(device=map_location, dtype=dtype or saved_dtype).eval()
    normalizers = {p: model.outputs[p].normalizer() for p in model.properties}
    return model, normalizers, config


def _read_model_payload(
    path: Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """``(model_config, state_dict, format-1 normalizer states or None, training config)`` of a
    ``model.pt`` or a TensorLightningModule checkpoint; :class:`ModelFileError` for anything else."""
    payload = read_torch_file(path)
    if not isinstance(payload, dict):
        raise ModelFileError(f"{str(path)!r} is not an irreptensor_ml model file (holds a {type(payload).__name__})")

    def need(mapping: Any, key: str, kind: type, where: str) -> Any:
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, kind):
            state = "lacks" if value is None else f"has a {type(value).__name__} as"
            raise ModelFileError(f"{where} {str(path)!r} {state} {key!r} (expected a {kind.__name__})")
        return value

    if payload.get("format") == FORMAT:
        version = payload.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"model file {str(path)!r} has format_version {version!r}, newer than supported {FORMAT_VERSION}"
            )
        model_config = need(payload, "model_config", dict, "model file")
        state = need(payload, "state_dict", dict, "model file")
        normalizer_states = payload.get("normalizers") if version < 2 else None
        config = dict(payload.get("config") or {})
    elif "state_dict" in payload and "hyper_parameters" in payload:
        hp = need(payload, "hyper_parameters", dict, "checkpoint")
        irreps = need(hp, "irreps", dict, "checkpoint")
        hp_model = need(hp, "model", dict, "checkpoint")
        model_config = {
            "trunk": dict(hp_model.get("trunk") or {}),
            "heads": {
                p: {"irreps_out": s, **dict((hp_model.get("heads") or {}).get(p) or {})}
                for p, s in irreps.items()
            },
        }
        for p, transform in (hp_model.get("outputs") or {}).items():
            if p in model_config["heads"]:
                model_config["heads"][p]["output"] = transform
        full = need(payload, "state_dict", dict, "checkpoint")
        state = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
        normalizer_states = None
        if any(k.startswith("norm_shift_") for k in full):  # a checkpoint of format-1 days
            try:
                normalizer_states = {
                    p: {"irreps": s, "shift": full[f"norm_shift_{p}"], "scale": full[f"norm_scale_{p}"]}
                    for p, s in irreps.items()
                }
            except KeyError as exc:
                raise ModelFileError(f"checkpoint {str(path)!r} lacks normalizer {exc.args[0]!r}") from None
        config = dict(hp.get("run_config") or {})
    else:
        raise ModelFileError(f"{str(path)!r} is neither a model.pt nor a TensorLightningModule checkpoint")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{str(path)!r}: state_dict entry {bad[0]!r} is not a tensor")
    return model_config, state, normalizer_states, config


def _check_state(where: str, model: TensorPredictor, state: Mapping[str, torch.Tensor]) -> None:
    """One-line :class:`ModelFileError` when ``state`` does not fit ``model`` (missing or
    unexpected keys, shape mismatches), instead of torch's multi-line error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    faults = []
    if missing:
        faults.append(f"{len(missing)} missing weight(s), e.g. {missing[0]!r}")
    if unexpected:
        faults.append(f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]!r}")
    if shapes:
        faults.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[0]} expected")
    if faults:
        raise ModelFileError(f"{where}: weights do not fit the architecture it describes: {'; '.join(faults)}")
