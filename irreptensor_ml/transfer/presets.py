"""Transfer-study configuration: defaults, the shipped presets (``quick``, ``full``, ``full-cpu``,
``foundation``, ``learn-cpu`` ...), validation.

A study config is a plain nested dict (YAML). Top-level keys (see :data:`DEFAULTS` for values):

``name``                 label used in reports.
``results_dir``          where runs, models, predictions and the report go.
``data``                 :class:`~irreptensor_ml.data.DataConfig` settings of the study data
                         (``properties`` and ``train_fraction`` are fixed by the study).
``train``                training config (``model``, ``loss``, ``optim``, ``trainer`` sections of
                         ``configs/default.yaml``) shared by every run. Per-property settings --
                         ``model.outputs`` (``{dielectric: exp}``), ``model.heads``
                         (``{dielectric: {parts: true}}``), ``loss.type`` as a mapping
                         (``{piezoelectric: relative}``), ``loss.weights`` -- apply to the runs
                         that have a head of that property.
``pretrain``             ``property`` (elastic), ``seeds`` (one pretrained trunk per seed; the
                         i-th study seed uses ``seeds[i % len(seeds)]``) and ``overrides``
                         (dotted training-config keys, e.g. ``trainer.max_epochs``).
``targets``              what the trunk is transferred to: properties, or a property's part
                         (``dielectric_electronic``: the electronic dielectric tensor, whose mean
                         eigenvalue is n^2). A part target is reported from its property's runs,
                         whose head then predicts the parts (``model.heads.<property>.parts``);
                         with both ``dielectric`` and ``dielectric_electronic`` each run is shared.
``target_settings``      ``{target: overrides}``: dotted training keys (``optim.lr``,
                         ``trainer.max_epochs``, ``loss.type``, ``model.outputs.<p>`` ...) applied
                         to every run of that target, before the strategy's; not ``model.trunk``
                         (one trunk architecture for all runs: the pretrained one).
``target_strategies``    ``{target: [strategies]}``: the strategies run for that target (default:
                         all ``strategies``); each list includes scratch. The pretraining property
                         may be a target only of strategies that do not reuse the pretraining run
                         (e.g. ``{elastic: [scratch, foundation-frozen]}``).
``strategies``           subset of scratch / frozen / finetune / multitask / control /
                         foundation-frozen / foundation-finetune.
``fractions``            learning-curve fractions of each target's training materials.
``seeds``                seeds per point (subsample, initialisation and batch order).
``min_train_steps``      lower bound on optimizer steps per run (small fractions get more epochs,
                         see :func:`irreptensor_ml.transfer.runner.epochs_for`); 0 = off.
``strategy_settings``    fixed per-strategy overrides (dotted keys; ``trunk_lr_scale`` for
                         finetune and foundation-finetune; ``min_train_steps`` replaces the
                         study's for that strategy; ``start_from: foundation-frozen`` makes each
                         foundation-finetune run continue the foundation-frozen run of its target,
                         fraction and seed -- such a strategy has one candidate, no tuning runs).
``foundation``           trunk (``FoundationTrunk`` arguments) and head (head config, default a
                         tensor-product head) of the foundation-* strategies; unused otherwise.
``reuse_runs_from``      other results directories whose finished runs are copied into this
                         study's store when a planned run has the same id (e.g. the scratch
                         baselines of the ``full`` study in the ``foundation`` study).
``reference_rows``       ``{property: summary.json}`` of rows computed outside the study on the
                         same test materials (e.g. SevenNet-0's own finite-strain elastic
                         tensors, ``scripts/foundation_reference.py``) for the report.
``baselines_dir``        directory of ``benchmarks/baselines.py`` outputs (``<property>.json``:
                         zero, isotropic and random-forest baselines) printed beside the study's
                         rows when the file of a target's property is present (read, never
                         recomputed; their test materials are stated); ``null`` = none.
``tuning``               ``candidates: {strategy: [overrides, ...]}`` -- every listed strategy
                         must get the same number of candidates (equal tuning budget); they are
                         compared on the validation Frobenius MAE at ``fraction`` over ``seeds``;
                         an empty mapping = no tuning (fixed settings).
``bootstrap``            ``n_resamples``, ``confidence``, ``seed`` of the paired bootstrap.
``eval_batch_size``      batch size of the metric passes.
``workers``              concurrent runs: ``> 1`` starts a local Dask cluster of that many worker
                         processes (``--workers`` overrides); 1 runs them one after the other.
``scheduler_address``    address of an existing Dask scheduler (``tcp://host:8786``, e.g. of a
                         dask-jobqueue cluster on Slurm/PBS) to run on instead; its workers must see
                         ``results_dir`` (``--scheduler-address`` overrides). ``workers`` and
                         ``scheduler_address`` only say where runs execute: not part of run ids.

:func:`load_study_config` merges a preset name (``quick``, ``full``), a YAML path or a dict over
:data:`DEFAULTS`, applies ``"a.b=value"`` overrides and validates; unknown keys raise
``ValueError`` naming them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from irreptensor_ml.transfer.registry import (
    PART_TARGETS,
    PRETRAINED_STRATEGIES,
    SCALED_STRATEGIES,
    START_FROM,
    STRATEGIES,
    target_property,
)

__all__ = ["DEFAULTS", "PRESETS", "load_study_config", "preset_path", "validate_study_config"]

#: shipped preset names -> file names in ``irreptensor_ml/configs``
PRESETS: dict[str, str] = {
    "quick": "transfer_quick.yaml",
    "full": "transfer_full.yaml",
    "full-cpu": "transfer_full_cpu.yaml",
    "learn-cpu": "transfer_learn_cpu.yaml",
    "foundation": "transfer_foundation.yaml",
    "foundation-cpu": "transfer_foundation_cpu.yaml",
    "foundation-finetune-cpu": "transfer_foundation_finetune_cpu.yaml",
}

DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "results_dir": "transfer_results/custom",
    "data": {
        "sources": ["all"],
        "cutoff": 4.0,
        "batch_size": 16,
        "split_seed": 0,
        "split_fractions": [0.8, 0.1, 0.1],
        "check_symmetry": True,
        "progress": False,
    },
    "train": {},
    "pretrain": {"property": "elastic", "seeds": [0], "overrides": {}},
    "targets": ["dielectric", "piezoelectric"],
    "strategies": ["scratch", "frozen", "finetune", "multitask", "control"],
    "fractions": [0.1, 0.25, 0.5, 1.0],
    "seeds": [0, 1, 2],
    "min_train_steps": 0,
    "strategy_settings": {},
    "tuning": {"fraction": 1.0, "seeds": [0], "candidates": {}},
    "bootstrap": {"n_resamples": 10000, "confidence": 0.95, "seed": 0},
    "eval_batch_size": 64,
    "workers": 1,
    "scheduler_address": None,
    "notes": [],  # free-text lines printed under the report's setup (e.g. how the runs were executed)
    "foundation": {
        "trunk": {"foundation": "7net-0", "layer": None, "scalar_layers": None, "parity": "symmetrize"},
        "head": {"type": "tensor_product", "mul_square": 8, "input_norm": True},
    },
    "reuse_runs_from": [],
    "reference_rows": {},
    "target_settings": {},
    "target_strategies": {},
    "baselines_dir": "results/baselines",
}

_STRATEGIES = tuple(STRATEGIES)
_PRETRAINED = PRETRAINED_STRATEGIES
_SCALED = SCALED_STRATEGIES
_PROPERTIES = ("elastic", "dielectric", "piezoelectric")
#: properties and their parts (mirrors :data:`irreptensor_ml.transfer.studydata.PART_TARGETS`)
_TARGETS = (*_PROPERTIES, *PART_TARGETS)
_STRATEGY_KEYS = ("trunk_lr_scale",)
_START_FROM = START_FROM


def preset_path(name: str) -> Path:
    """Path of a shipped preset YAML (a key of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown transfer preset {name!r}; shipped presets: {sorted(PRESETS)}")
    from irreptensor_ml.train.config import CONFIG_DIR

    return CONFIG_DIR / PRESETS[name]


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``config[a][b]... = value`` for ``dotted = "a.b..."`` (creating sections)."""
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"override key {dotted!r} has an empty part")
    node = config
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = copy.deepcopy(value)


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested override mappings -> dotted keys: ``{"trainer": {"max_epochs": 3}}`` ->
    ``{"trainer.max_epochs": 3}``; a key given twice raises ``ValueError``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        items = flatten_overrides(value, full + ".") if isinstance(value, Mapping) and value else {full: value}
        for k, v in items.items():
            if k in out:
                raise ValueError(f"override {k!r} is given twice")
            out[k] = v
    return out


def _read(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if str(source) in PRESETS:
        path = preset_path(str(source))
    elif not path.is_file():
        raise ValueError(
            f"transfer config {str(source)!r} is neither a preset ({sorted(PRESETS)}) nor a file"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"transfer config {str(path)!r} must hold a mapping")
    return data


def load_study_config(
    source: str | Path | Mapping[str, Any] | None = "quick",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """:data:`DEFAULTS` <- ``source`` (preset name, YAML path or dict) <- ``"a.b=value"`` overrides.

    Override values are parsed as YAML (``fractions=[0.5,1.0]``, ``workers=4``). Returns the
    validated config.
    """
    user = _read(source) if isinstance(source, (str, Path)) else dict(source or {})
    # the training config's merge rule
    from irreptensor_ml.train.config import merge_configs

    config = merge_configs(DEFAULTS, user)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like 'key.sub=value'")
        key, raw = item.split("=", 1)
        set_dotted(config, key.strip(), yaml.safe_load(raw))
    validate_study_config(config)
    return config


def target_base(target: str) -> str:
    """The property of a target (``dielectric_electronic`` -> ``dielectric``)."""
    return target_property(target)[0]


def strategies_for(config: Mapping[str, Any], target: str) -> list[str]:
    """The strategies run for ``target``: ``target_strategies[target]`` or all ``strategies`` (in
    the order of ``strategies``)."""
    chosen = (config.get("target_strategies") or {}).get(target)
    return [s for s in config["strategies"] if chosen is None or s in chosen]


def _check_list(config: Mapping[str, Any], key: str, allowed: Sequence[str] | None = None) -> list:
    value = config[key]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list, got {value!r}")
    if len(set(map(str, value))) != len(value):
        raise ValueError(f"{key} has duplicates: {value}")
    if allowed is not None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ValueError(f"{key} has unknown entries {bad}; allowed: {list(allowed)}")
    return value


def validate_study_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first unknown key or bad value."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown transfer config key(s) {unknown}; known: {sorted(DEFAULTS)}")
    for section in ("pretrain", "tuning", "bootstrap"):
        if not isinstance(config[section], Mapping):
            raise ValueError(f"{section} must be a mapping, got {config[section]!r}")
        bad = sorted(set(config[section]) - set(DEFAULTS[section]))
        if bad:
            raise ValueError(f"unknown key(s) {bad} in {section!r}; known: {sorted(DEFAULTS[section])}")
    notes = config["notes"]
    if not isinstance(notes, (list, tuple)) or not all(isinstance(n, str) for n in notes):
        raise ValueError(f"notes must be a list of strings, got {notes!r}")
    data = dict(config["data"])
    for fixed in ("properties", "train_fraction"):
        if fixed in data:
            raise ValueError(f"data.{fixed} is set by the transfer study; remove it from the config")
    from irreptensor_ml.data.datamodule import DataConfig

    DataConfig.from_dict(data)  # raises ValueError naming a bad data key
    targets = _check_list(config, "targets", _TARGETS)
    pre = config["pretrain"]["property"]
    if pre not in _PROPERTIES:
        raise ValueError(f"pretrain.property must be one of {_PROPERTIES}, got {pre!r}")
    strategies = _check_list(config, "strategies", _STRATEGIES)
    if "scratch" not in strategies:
        raise ValueError("strategies must include 'scratch' (the baseline every strategy is compared to)")
    per_target = config["target_strategies"]
    if not isinstance(per_target, Mapping):
        raise ValueError(f"target_strategies must map targets to lists of strategies, got {per_target!r}")
    for t, lst in per_target.items():
        if t not in targets:
            raise ValueError(f"target_strategies names {t!r}, which is not one of the targets {targets}")
        if not isinstance(lst, list) or not lst or len(set(lst)) != len(lst):
            raise ValueError(f"target_strategies.{t} must be a non-empty list without duplicates, got {lst!r}")
        bad = [s for s in lst if s not in strategies]
        if bad:
            raise ValueError(f"target_strategies.{t} has {bad}, which are not among the strategies {strategies}")
        if "scratch" not in lst:
            raise ValueError(f"target_strategies.{t} must include 'scratch' (the baseline of every comparison)")
    if pre in targets and any(s in _PRETRAINED for s in strategies_for(config, pre)):
        raise ValueError(
            f"pretrain.property {pre!r} cannot also be a target of strategies that reuse the "
            f"pretraining run ({[s for s in strategies_for(config, pre) if s in _PRETRAINED]}); "
            f"restrict its strategies, e.g. target_strategies: {{{pre}: [scratch, foundation-frozen]}}"
        )
    _check_target_settings(config, targets)
    for f in _check_list(config, "fractions"):
        if not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"fractions must be numbers in (0, 1], got {f!r}")
    for key in ("seeds",):
        for s in _check_list(config, key):
            if not isinstance(s, int) or isinstance(s, bool):
                raise ValueError(f"{key} must be integers, got {s!r}")
    if not isinstance(config["pretrain"]["overrides"] or {}, Mapping):
        raise ValueError("pretrain.overrides must map dotted training keys to values")
    _check_overrides("pretrain", config["pretrain"]["overrides"] or {}, "pretrain.overrides")
    pseeds = config["pretrain"]["seeds"]
    if not isinstance(pseeds, list) or not pseeds or not all(isinstance(s, int) for s in pseeds):
        raise ValueError(f"pretrain.seeds must be a non-empty list of integers, got {pseeds!r}")
    if not isinstance(config["min_train_steps"], int) or config["min_train_steps"] < 0:
        raise ValueError(f"min_train_steps must be an integer >= 0, got {config['min_train_steps']!r}")
    if not isinstance(config["workers"], int) or config["workers"] < 1:
        raise ValueError(f"workers must be an integer >= 1, got {config['workers']!r}")
    address = config["scheduler_address"]
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"scheduler_address must be a Dask scheduler address (tcp://host:port) or null, "
                         f"got {address!r}")
    if not isinstance(config["eval_batch_size"], int) or config["eval_batch_size"] < 1:
        raise ValueError(f"eval_batch_size must be an integer >= 1, got {config['eval_batch_size']!r}")
    settings = config["strategy_settings"]
    if not isinstance(settings, Mapping):
        raise ValueError("strategy_settings must map strategy -> overrides")
    chained = []
    for strat, over in settings.items():
        if strat not in _STRATEGIES:
            raise ValueError(f"strategy_settings names unknown strategy {strat!r}")
        _check_overrides(strat, over, f"strategy_settings.{strat}")
        over = dict(over or {})
        if "min_train_steps" in over and not (
            isinstance(over["min_train_steps"], int) and not isinstance(over["min_train_steps"], bool)
            and over["min_train_steps"] >= 0
        ):
            raise ValueError(f"strategy_settings.{strat}.min_train_steps must be an integer >= 0, "
                             f"got {over['min_train_steps']!r}")
        if "start_from" in over:
            source = over["start_from"]
            if source not in _START_FROM.get(strat, ()):
                raise ValueError(
                    f"strategy_settings.{strat}.start_from={source!r}: allowed "
                    + (f"{list(_START_FROM[strat])}" if strat in _START_FROM else "only for "
                       f"{sorted(_START_FROM)}")
                )
            if source not in strategies:
                raise ValueError(f"strategy_settings.{strat}.start_from={source!r} is not one of the "
                                 f"study's strategies {strategies}")
            for t in targets:
                if strat in strategies_for(config, t) and source not in strategies_for(config, t):
                    raise ValueError(f"target_strategies.{t}: {strat!r} starts from {source!r} runs; "
                                     f"add {source!r} to it")
            chained.append(strat)
    tuning = config["tuning"]
    if not 0 < float(tuning["fraction"]) <= 1:
        raise ValueError(f"tuning.fraction must be in (0, 1], got {tuning['fraction']!r}")
    cands = tuning["candidates"] or {}
    if not isinstance(cands, Mapping):
        raise ValueError("tuning.candidates must map strategy -> list of overrides")
    for strat, lst in cands.items():
        if strat not in _STRATEGIES:
            raise ValueError(f"tuning.candidates names unknown strategy {strat!r}")
        if not isinstance(lst, list) or not lst:
            raise ValueError(f"tuning.candidates.{strat} must be a non-empty list of overrides")
        for k, over in enumerate(lst):
            _check_overrides(strat, over, f"tuning.candidates.{strat}[{k}]")
            bad = sorted({"start_from", "min_train_steps"} & set(dict(over)))
            if bad:
                raise ValueError(f"tuning.candidates.{strat}[{k}]: {bad} belong in strategy_settings")
    for strat in chained:
        if len(cands.get(strat) or [{}]) != 1:
            raise ValueError(
                f"tuning.candidates.{strat}: a strategy with start_from has one candidate (it continues "
                "the tuned runs of its source); remove its candidates"
            )
    sizes = {s: len(cands.get(s) or [{}]) for s in strategies if s not in chained}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"unequal tuning budget: candidates per strategy {sizes}; give every strategy the same "
            "number of candidates"
        )
    b = config["bootstrap"]
    if not isinstance(b["n_resamples"], int) or b["n_resamples"] < 100:
        raise ValueError(f"bootstrap.n_resamples must be an integer >= 100, got {b['n_resamples']!r}")
    if not 0 < float(b["confidence"]) < 1:
        raise ValueError(f"bootstrap.confidence must be in (0, 1), got {b['confidence']!r}")
    foundation = config["foundation"]
    if not isinstance(foundation, Mapping) or sorted(foundation) != ["head", "trunk"]:
        raise ValueError(f"foundation must be a mapping with keys 'trunk' and 'head', got {foundation!r}")
    if not isinstance(foundation["trunk"], Mapping) or not foundation["trunk"].get("foundation"):
        raise ValueError("foundation.trunk must name the pretrained potential, e.g. {foundation: 7net-0}")
    if not isinstance(foundation["head"], Mapping) or "irreps_out" in foundation["head"]:
        raise ValueError("foundation.head must be a head config without irreps_out")
    reuse = config["reuse_runs_from"]
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        raise ValueError(f"reuse_runs_from must be a list of directories, got {reuse!r}")
    rows = config["reference_rows"]
    if not isinstance(rows, Mapping) or not all(p in _TARGETS and isinstance(f, str) for p, f in rows.items()):
        raise ValueError(f"reference_rows must map properties to summary files, got {rows!r}")
    bdir = config["baselines_dir"]
    if bdir is not None and not (isinstance(bdir, str) and bdir):
        raise ValueError(f"baselines_dir must be a directory (string) or null, got {bdir!r}")
    train = config["train"]
    if not isinstance(train, Mapping):
        raise ValueError("train must be a mapping of training-config sections")
    bad = sorted(set(train) - {"model", "loss", "optim", "trainer"})
    if bad:
        raise ValueError(f"unknown key(s) {bad} in 'train'; known: ['loss', 'model', 'optim', 'trainer']")


def _check_target_settings(config: Mapping[str, Any], targets: Sequence[str]) -> None:
    """``target_settings`` and the per-target training settings they resolve to."""
    settings = config["target_settings"]
    if not isinstance(settings, Mapping):
        raise ValueError(f"target_settings must map targets to overrides, got {settings!r}")
    train = config["train"]
    if not isinstance(train, Mapping):
        raise ValueError("train must be a mapping of training-config sections")
    for t, over in settings.items():
        if t not in targets:
            raise ValueError(f"target_settings names {t!r}, which is not one of the targets {list(targets)}")
        _check_overrides("target", over, f"target_settings.{t}")
        for key in flatten_overrides(over or {}):
            if key in ("start_from", "min_train_steps", "trunk_lr_scale") or key.startswith("model.trunk") or key in (
                    "model.pretrained_trunk", "model.freeze_trunk"):
                raise ValueError(
                    f"target_settings.{t}: {key!r} cannot be set per target (the trunk is shared by every "
                    "run, and the strategy keys belong in strategy_settings)"
                )
    for t in targets:
        cfg = copy.deepcopy(dict(train))
        for key, value in flatten_overrides(settings.get(t) or {}).items():
            set_dotted(cfg, key, value)
        prop = target_base(t)
        model = dict(cfg.get("model") or {})
        outputs = dict(model.get("outputs") or {})
        loss_type = (cfg.get("loss") or {}).get("type", "frobenius")
        kinds = dict(loss_type) if isinstance(loss_type, Mapping) else {p: loss_type for p in _PROPERTIES}
        for p, kind in kinds.items():
            if p not in _PROPERTIES:
                raise ValueError(f"loss.type names {p!r} (target {t}); use property names {list(_PROPERTIES)}")
            if kind == "log" and outputs.get(p, "linear") != "exp" and (isinstance(loss_type, Mapping) or p == prop):
                raise ValueError(f"target {t}: loss.type 'log' of {p!r} needs model.outputs.{p}: exp")
        for p, head in dict(model.get("heads") or {}).items():
            if isinstance(head, Mapping) and head.get("parts") and p not in {prop for prop, _ in PART_TARGETS.values()}:
                raise ValueError(f"target {t}: model.heads.{p}.parts: {p!r} has no parts")


def _check_overrides(strategy: str, over: Any, where: str) -> None:
    if not isinstance(over, Mapping):
        raise ValueError(f"{where} must be a mapping of dotted keys to values, got {over!r}")
    for key, value in flatten_overrides(over).items():
        if key in ("start_from", "min_train_steps"):
            continue  # checked with strategy_settings
        if key in _STRATEGY_KEYS:
            if strategy not in _SCALED:
                raise ValueError(f"{where}: {key} applies only to {' and '.join(_SCALED)}")
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{where}: {key} must be a number > 0, got {value!r}")
        elif key.split(".", 1)[0] not in ("model", "loss", "optim", "trainer"):
            raise ValueError(
                f"{where}: key {key!r} must be trunk_lr_scale or a dotted training key under "
                "model/loss/optim/trainer"
            )
