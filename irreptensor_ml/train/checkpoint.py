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
:class:`~irreptensor_ml.train.module.TensorLightningModule` or a run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.model import TensorPredictor

__all__ = ["MODEL_FILE", "FORMAT", "save_model", "load_model", "resolve_model_path"]

MODEL_FILE = "model.pt"
FORMAT = "irreptensor_ml.model"
FORMAT_VERSION = 2


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """A run directory resolves to its ``model.pt`` (or ``checkpoints/last.ckpt`` if absent)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / MODEL_FILE, path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise ValueError(f"run directory {str(path)!r} has neither {MODEL_FILE} nor checkpoints/last.ckpt")
    if not path.is_file():
        raise ValueError(f"model path {str(path)!r} does not exist")
    return path


def _build(model_config: Mapping[str, Any], dtype: torch.dtype | None) -> TensorPredictor:
    """Build the architecture, under ``dtype`` as default dtype so that e3nn's constant buffers
    (Clebsch-Gordan coefficients) are computed at that precision."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
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
        path: ``model.pt``, a Lightning ``.ckpt`` of :class:`TensorLightningModule`, or a run
            directory.  Always read with ``torch.load(weights_only=True)``.
        map_location: device of the returned model.
        dtype: floating dtype of the returned model (default: as saved, normally float32).
    """
    path = resolve_model_path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{str(path)!r} is not an irreptensor_ml model file")
    if payload.get("format") == FORMAT:
        if int(payload.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} has format_version {payload['format_version']}, newer than "
                f"supported {FORMAT_VERSION}"
            )
        model_config = payload["model_config"]
        state = payload["state_dict"]
        normalizer_states = payload.get("normalizers") if int(payload.get("format_version", 0)) < 2 else None
        config = dict(payload.get("config") or {})
    elif "state_dict" in payload and "hyper_parameters" in payload:
        hp = payload["hyper_parameters"]
        for key in ("irreps", "model"):
            if key not in hp:
                raise ValueError(f"checkpoint {str(path)!r} lacks hyper-parameter {key!r}")
        model_config = {
            "trunk": dict(hp["model"].get("trunk") or {}),
            "heads": {
                p: {"irreps_out": s, **dict((hp["model"].get("heads") or {}).get(p) or {})}
                for p, s in hp["irreps"].items()
            },
        }
        for p, transform in (hp["model"].get("outputs") or {}).items():
            if p in model_config["heads"]:
                model_config["heads"][p]["output"] = transform
        full = payload["state_dict"]
        state = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
        normalizer_states = None
        if any(k.startswith("norm_shift_") for k in full):  # a checkpoint of format-1 days
            normalizer_states = {
                p: {"irreps": s, "shift": full[f"norm_shift_{p}"], "scale": full[f"norm_scale_{p}"]}
                for p, s in hp["irreps"].items()
            }
        config = dict(hp.get("run_config") or {})
    else:
        raise ValueError(f"{str(path)!r} is neither a model.pt nor a TensorLightningModule checkpoint")

    saved_dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = _build(model_config, dtype or saved_dtype)
    if normalizer_states is not None:
        # format 1: linear outputs whose normalizers were stored beside the model
        for p, norm_state in normalizer_states.items():
            model.outputs[p].load_normalizer(norm_state)
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("outputs.")}, **state}
    model.load_state_dict(state)
    model = model.to(device=map_location, dtype=dtype or saved_dtype).eval()
    normalizers = {p: model.outputs[p].normalizer() for p in model.properties}
    return model, normalizers, config
