"""Training configuration: YAML defaults, user overrides, validation.

A configuration is a plain nested dict (YAML-serialisable) with the sections

* ``seed`` (int),
* ``data``: keyword settings of :class:`irreptensor_ml.data.TensorDataModule` (validated there),
* ``model``: ``trunk`` (:class:`irreptensor_ml.model.EquivariantTrunk` arguments), ``heads``
  (optional per-property head settings), ``pretrained_trunk`` (transfer learning from a saved
  model) and ``freeze_trunk``,
* ``loss``: ``type`` (``frobenius`` | ``relative`` | ``relative_sign_free`` | ``log`` | ``mse`` |
  ``smooth_l1``, see :mod:`irreptensor_ml.train.module`; a name or ``{property: name}``),
  ``smooth_l1_beta``, per-property ``weights``,
* ``optim``: learning rate, weight decay and LR schedule,
* ``trainer``: Lightning ``Trainer`` settings (accelerator, devices, num_nodes, strategy, ...).

:func:`load_config` deep-merges a user file/dict (and ``"a.b=value"`` overrides) over
``irreptensor_ml/configs/default.yaml`` and rejects unknown keys with a ``ValueError`` that names
them, so that a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

__all__ = [
    "CONFIG_DIR",
    "apply_overrides",
    "default_config",
    "load_config",
    "merge_configs",
    "validate_config",
]

#: directory of the shipped YAML configurations (``default.yaml``, ``tiny.yaml``).
CONFIG_DIR = Path(str(resources.files("irreptensor_ml") / "configs"))

_SECTIONS = ("seed", "data", "model", "loss", "optim", "trainer")
# Sections whose keys are checked here (``data`` and ``model.trunk`` are checked by their owners).
_CHECKED = ("loss", "optim", "trainer")
_LOSS_TYPES = ("mse", "smooth_l1", "frobenius", "relative", "relative_sign_free", "log")
_SCHEDULERS = ("cosine", "plateau", "none")


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        # allow the names of shipped configurations, e.g. "tiny" or "tiny.yaml"
        shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
        if shipped.is_file():
            path = shipped
        else:
            raise ValueError(f"config file {str(path)!r} does not exist (nor as a shipped config)")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must contain a mapping, got {type(data).__name__}")
    return data


def default_config() -> dict[str, Any]:
    """The shipped ``default.yaml`` as a fresh dict."""
    return _read_yaml(CONFIG_DIR / "default.yaml")


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings are merged key by key, everything else in ``override`` wins."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``"section.key=value"`` strings (value parsed as YAML, e.g. ``trainer.devices=2``)."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like 'section.key=value'")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ValueError(f"override {item!r} has an empty key")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return out


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first unknown section/key or bad value."""
    unknown = sorted(set(config) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known: {list(_SECTIONS)}")
    defaults = default_config()
    for section in _CHECKED:
        bad = sorted(set(config.get(section, {})) - set(defaults[section]))
        if bad:
            raise ValueError(
                f"unknown key(s) {bad} in config section {section!r}; known: {sorted(defaults[section])}"
            )
    model = config.get("model", {})
    bad = sorted(set(model) - set(defaults["model"]) - {"outputs"})
    if bad:
        raise ValueError(
            f"unknown key(s) {bad} in config section 'model'; known: {sorted({*defaults['model'], 'outputs'})}"
        )
    if not isinstance(config.get("seed", 0), int):
        raise ValueError(f"seed must be an int, got {config.get('seed')!r}")
    loss = config.get("loss", {})
    loss_type = loss.get("type", "mse")
    per_prop = dict(loss_type) if isinstance(loss_type, Mapping) else {"": loss_type}
    for prop, kind in per_prop.items():
        if kind not in _LOSS_TYPES:
            key = f"loss.type.{prop}" if prop else "loss.type"
            raise ValueError(f"{key} must be one of {_LOSS_TYPES}, got {kind!r}")
    from irreptensor_ml.model.outputs import TRANSFORMS

    outputs = model.get("outputs") or {}
    if not isinstance(outputs, Mapping):
        raise ValueError(f"model.outputs must map property -> transform, got {outputs!r}")
    for prop, transform in outputs.items():
        if transform not in TRANSFORMS:
            raise ValueError(f"model.outputs.{prop} must be one of {sorted(TRANSFORMS)}, got {transform!r}")
        allowed = TRANSFORMS[transform]
        if allowed is not None and prop not in allowed:
            raise ValueError(f"model.outputs.{prop}: transform {transform!r} applies to {', '.join(allowed)} only")
    for prop, w in (loss.get("weights") or {}).items():
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"loss.weights.{prop} must be a number >= 0, got {w!r}")
    max_epochs = config.get("trainer", {}).get("max_epochs", 1)
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"trainer.max_epochs must be a positive integer, got {max_epochs!r}")
    optim = config.get("optim", {})
    if optim.get("scheduler", "cosine") not in _SCHEDULERS:
        raise ValueError(f"optim.scheduler must be one of {_SCHEDULERS}, got {optim.get('scheduler')!r}")
    if not float(optim.get("lr", 1e-3)) > 0:
        raise ValueError(f"optim.lr must be > 0, got {optim.get('lr')!r}")
    if model.get("pretrained_trunk"):
        from irreptensor_ml.train.checkpoint import resolve_model_path

        resolve_model_path(model["pretrained_trunk"])  # raises ValueError if missing
    trunk_cutoff = model.get("trunk", {}).get("cutoff")
    data_cutoff = config.get("data", {}).get("cutoff")
    if trunk_cutoff is not None and data_cutoff is not None and float(trunk_cutoff) != float(data_cutoff):
        raise ValueError(
            f"model.trunk.cutoff={trunk_cutoff} differs from data.cutoff={data_cutoff}; "
            "the radial envelope must vanish at the graph cutoff (set only data.cutoff)"
        )


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Defaults <- ``source`` (YAML path, shipped name such as ``"tiny"``, or dict) <- overrides.

    The model's cutoff is set to ``data.cutoff``.  Returns a validated plain dict.
    """
    user = _read_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
    config = apply_overrides(merge_configs(default_config(), user), overrides)
    validate_config(config)
    config["model"].setdefault("trunk", {})["cutoff"] = float(config["data"]["cutoff"])
    config["model"].setdefault("heads", {})
    return config
