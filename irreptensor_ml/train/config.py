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
``irreptensor_ml/configs/default.yaml`` and checks the result against a pydantic schema
(:class:`TrainingConfig`: no unknown keys, so that a typo cannot silently fall back to a default;
loss names and schedulers from fixed lists; numbers in range).  A bad config raises ``ValueError``
with one line per bad key, ``"trainer.max_epochs: Input should be greater than or equal to 1
(got -5)"``.  The schema only checks: the config stays the plain dict that was given.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
)

__all__ = [
    "CONFIG_DIR",
    "TrainingConfig",
    "apply_overrides",
    "default_config",
    "load_config",
    "merge_configs",
    "validate_config",
]

#: directory of the shipped YAML configurations (``default.yaml``, ``tiny.yaml``).
CONFIG_DIR = Path(str(resources.files("irreptensor_ml") / "configs"))

_LossType = Literal["mse", "smooth_l1", "frobenius", "relative", "relative_sign_free", "log"]
_NonNegative = Annotated[float, Field(ge=0)]
_Count = Annotated[int, Field(ge=0)]


def _loss_form(value: Any) -> str:
    return "per_property" if isinstance(value, Mapping) else "name"


class _Section(BaseModel):
    # the schema only checks: load_config returns the user's own values, never a model dump
    model_config = ConfigDict(extra="forbid")


class LossSection(_Section):
    """``loss``: a loss name or ``{property: name}``, the smooth-L1 beta, per-property weights."""

    type: Annotated[
        Annotated[_LossType, Tag("name")] | Annotated[dict[str, _LossType], Tag("per_property")],
        Discriminator(_loss_form),
    ]
    smooth_l1_beta: _NonNegative
    weights: dict[str, Annotated[StrictFloat, Field(ge=0)]] | None


class OptimSection(_Section):
    """``optim``: AdamW learning rate and weight decay, and the per-epoch LR schedule."""

    lr: Annotated[float, Field(gt=0)]  # lax: ``--set optim.lr=1e-3`` is the YAML string '1e-3'
    weight_decay: _NonNegative
    scheduler: Literal["cosine", "plateau", "none"]
    warmup_epochs: _Count
    min_lr: _NonNegative
    plateau_factor: Annotated[float, Field(gt=0, lt=1)]
    plateau_patience: _Count


class TrainerSection(_Section):
    """``trainer``: Lightning ``Trainer`` settings (Lightning checks the strings; null: its default)."""

    max_epochs: Annotated[StrictInt, Field(ge=1)]
    accelerator: str | None
    devices: int | str | list[int] | None
    num_nodes: Annotated[int, Field(ge=1)] | None
    strategy: str | None
    precision: int | str | None
    gradient_clip_val: _NonNegative | None
    early_stopping_patience: _Count
    log_every_n_steps: _Count | None
    enable_progress_bar: bool | None
    deterministic: bool | Literal["warn"] | None
    limit_train_batches: _Count | _NonNegative | None
    limit_val_batches: _Count | _NonNegative | None
    num_threads: _Count | None  # 0 or null: leave torch's default


class ModelSection(_Section):
    """``model``: ``trunk`` and ``heads`` are checked by the model, ``outputs`` below."""

    trunk: dict[str, Any]
    heads: dict[str, Any] | None
    outputs: dict[str, str] | None = None
    pretrained_trunk: str | Path | None
    freeze_trunk: bool | None


class TrainingConfig(_Section):
    """The whole configuration (``data`` is checked by :class:`irreptensor_ml.data.DataConfig`)."""

    seed: StrictInt
    data: dict[str, Any]
    model: ModelSection
    loss: LossSection
    optim: OptimSection
    trainer: TrainerSection


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


def _known_keys(path: Sequence[str]) -> list[str] | None:
    """The keys the schema allows at ``path`` (``None`` where it does not describe them)."""
    cls: Any = TrainingConfig
    for key in path:
        field = cls.model_fields.get(key)
        cls = field.annotation if field is not None else None
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
    return list(cls.model_fields)


def _key_path(error: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The keys of ``error["loc"]``: the names of union members and the discriminator tags that
    pydantic puts in ``loc`` are left out by following the path through ``config``."""
    path: list[str] = []
    node: Any = config
    loc = error["loc"]
    for i, part in enumerate(loc):
        if (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        elif not (i == len(loc) - 1 and error["type"] == "missing"):
            continue  # a union member's name or a discriminator tag, not a key
        path.append(str(part))
    return path


def _error_lines(exc: ValidationError, config: Mapping[str, Any]) -> list[str]:
    """One ``"section.key: message"`` line per bad key (a union's alternatives joined by "or")."""
    lines: dict[str, list[str]] = {}
    got: dict[str, Any] = {}
    for error in exc.errors():
        path = _key_path(error, config)
        key = ".".join(path)
        if error["type"] == "extra_forbidden":
            known = _known_keys(path[:-1])
            what = "unknown config section" if len(path) == 1 else f"unknown key in config section {path[-2]!r}"
            lines[key] = [what + (f"; known: {known}" if known is not None else "")]
        elif error["type"] == "missing":
            lines[key] = ["missing (neither in the config nor in default.yaml)"]
        else:
            lines.setdefault(key, []).append(error["msg"])
            got[key] = error["input"]
    return [
        f"{key}: {'; or '.join(msgs)}" + (f" (got {got[key]!r})" if key in got else "")
        for key, msgs in lines.items()
    ]


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every unknown section/key or bad value, one line each, as
    ``"section.key: ..."``; keys left out take their ``default.yaml`` values."""
    full = merge_configs(default_config(), config)
    try:
        TrainingConfig.model_validate(full)
    except ValidationError as exc:
        raise ValueError("\n".join(_error_lines(exc, full))) from None
    model = config.get("model") or {}
    from irreptensor_ml.model.outputs import TRANSFORMS

    for prop, transform in (model.get("outputs") or {}).items():
        if transform not in TRANSFORMS:
            raise ValueError(f"model.outputs.{prop} must be one of {sorted(TRANSFORMS)}, got {transform!r}")
        allowed = TRANSFORMS[transform]
        if allowed is not None and prop not in allowed:
            raise ValueError(f"model.outputs.{prop}: transform {transform!r} applies to {', '.join(allowed)} only")
    if model.get("pretrained_trunk"):
        from irreptensor_ml.train.checkpoint import resolve_model_path

        resolve_model_path(model["pretrained_trunk"])  # raises ValueError if missing
    trunk_cutoff = (model.get("trunk") or {}).get("cutoff")
    data_cutoff = (config.get("data") or {}).get("cutoff")
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
