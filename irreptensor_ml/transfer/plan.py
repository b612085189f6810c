"""The plan of the transfer study: :class:`Task`, the :class:`~irreptensor_ml.transfer.runner.RunSpec`
of every pretraining, tuning and final run, and the choice of tuning candidates from stored records."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from irreptensor_ml.train.config import load_config, validate_config
from irreptensor_ml.transfer.presets import (
    _PRETRAINED,
    flatten_overrides,
    set_dotted,
    strategies_for,
)
from irreptensor_ml.transfer.runner import RunSpec, parts_heads
from irreptensor_ml.transfer.strategies import (
    foundation_model_config,
    get_strategy,
    heads_for,
)
from irreptensor_ml.transfer.studydata import PROPERTIES, StudyData, target_property

if TYPE_CHECKING:
    from irreptensor_ml.transfer.store import RunStore

__all__ = [
    "Task", "base_train_config", "candidates", "make_spec", "plan_pretrain", "plan_runs", "plan_trials",
    "pretrain_seed", "pretraining_needed", "selection_from_records", "start_from", "tuning_needed", "val_metrics",
]


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a run, and whether it is final (then evaluated once on the test set)."""

    spec: RunSpec
    final: bool
    phase: str

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    def label(self) -> str:
        s = self.spec
        name = "pretrain" if s.kind == "pretrain" else s.strategy
        return f"{name:9s} {s.study_target:13s} f={s.fraction:<5g} seed={s.seed} cand={s.candidate}"


def base_train_config(config: Mapping[str, Any], data: StudyData) -> dict[str, Any]:
    """Training config shared by all runs: ``configs/default.yaml`` <- ``config["train"]``, with
    the data section of the study data (batch size and dtype from ``config["data"]``)."""
    user = copy.deepcopy(dict(config["train"]))
    data_cfg = dict(data.data_config)
    for key in ("batch_size", "dtype"):
        if key in config["data"]:
            data_cfg[key] = config["data"][key]
    data_cfg["properties"] = list(PROPERTIES)
    user["data"] = data_cfg
    return load_config(user)


def _apply(cfg: Mapping[str, Any], overrides: Mapping[str, Any], seed: int) -> tuple[dict[str, Any], float]:
    out = copy.deepcopy(dict(cfg))
    scale = 1.0
    for key, value in flatten_overrides(overrides).items():
        if key == "trunk_lr_scale":
            scale = float(value)
        else:
            set_dotted(out, key, value)
    out["seed"] = int(seed)
    validate_config(out)
    return out, scale


def pretrain_seed(config: Mapping[str, Any], seed: int) -> int:
    """Seed of the pretraining run used by study seed ``seed``: ``pretrain.seeds[seed % n]``."""
    seeds = list(config["pretrain"]["seeds"])
    return int(seeds[int(seed) % len(seeds)])


def pretraining_needed(config: Mapping[str, Any]) -> bool:
    """Whether the study runs its pretraining phase: unless the pretraining property is itself a
    target and no other target has a strategy that reuses the pretrained trunk (validation
    guarantees that the pretraining property's own strategies do not)."""
    pre = config["pretrain"]["property"]
    return pre not in config["targets"] or any(
        s in _PRETRAINED for t in config["targets"] if t != pre for s in strategies_for(config, t)
    )


def plan_pretrain(config: Mapping[str, Any], data: StudyData) -> dict[int, RunSpec]:
    """``{pretrain seed: RunSpec}`` of the pretraining runs (planned even where
    :func:`pretraining_needed` is false; :func:`~irreptensor_ml.transfer.study.run_study` then does not
    execute them)."""
    base = base_train_config(config, data)
    out = {}
    for s in config["pretrain"]["seeds"]:
        cfg, _ = _apply(base, config["pretrain"]["overrides"] or {}, s)
        out[int(s)] = RunSpec(
            "pretrain", "scratch", config["pretrain"]["property"], 1.0, int(s), cfg,
            data_fingerprint=data.fingerprint,
        )
    return out


def candidates(config: Mapping[str, Any], strategy: str) -> list[dict[str, Any]]:
    """Tuning candidates of ``strategy`` (each merged over ``strategy_settings``); ``[{}]``-like
    single candidate when the study does no tuning."""
    fixed = dict((config["strategy_settings"] or {}).get(strategy) or {})
    cands = (config["tuning"]["candidates"] or {}).get(strategy) or [{}]
    return [{**fixed, **dict(c)} for c in cands]


def start_from(config: Mapping[str, Any], strategy: str) -> str | None:
    """The strategy whose runs ``strategy``'s runs start from (``strategy_settings`` key
    ``start_from``), or ``None``."""
    return dict((config["strategy_settings"] or {}).get(strategy) or {}).get("start_from")


def make_spec(
    config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec], strategy: str,
    target: str, fraction: float, seed: int, candidate: int,
    selection: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> RunSpec:
    """The RunSpec of one transfer run with tuning candidate number ``candidate``.

    A foundation strategy's model section is the study's ``foundation`` trunk and head
    (:func:`~irreptensor_ml.transfer.strategies.foundation_model_config`), before the
    candidate's overrides; the other strategies' specs do not depend on ``foundation``.
    A strategy with ``start_from`` starts from the run of that strategy with the same target,
    fraction and seed and its ``selection``-chosen candidate (candidate 0 without a selection);
    its ``min_train_steps`` setting replaces the study's for its runs.

    ``target`` is a study target: a property, or a part (``dielectric_electronic``), whose run is
    its property's run (:attr:`RunSpec.part` set). The target's ``target_settings`` apply before
    the candidate's overrides; the head of every property with a part among the study's targets
    predicts the parts (``model.heads.<property>.parts``), so the runs of a property and of its
    part are one run when their settings agree."""
    strat = get_strategy(strategy)
    prop, part = target_property(target)
    over = dict(candidates(config, strategy)[candidate])
    source = over.pop("start_from", None)
    min_steps = over.pop("min_train_steps", None)
    base = base_train_config(config, data)
    if strat.foundation:
        base["model"] = foundation_model_config(base["model"], config["foundation"], prop)
    for key, value in flatten_overrides((config.get("target_settings") or {}).get(target) or {}).items():
        set_dotted(base, key, value)
    heads = heads_for(strat, prop, list(PROPERTIES))
    with_parts = {target_property(t)[0] for t in config["targets"] if target_property(t)[1] is not None}
    for p in heads:
        if p in with_parts:
            set_dotted(base, f"model.heads.{p}.parts", True)
    cfg, scale = _apply(base, over, seed)
    parts_fp = data.parts_fingerprint if set(heads) & set(parts_heads(cfg)) else ""
    if set(heads) & set(parts_heads(cfg)) and not parts_fp:
        raise ValueError(f"target {target!r}: the {strategy} runs' head(s) {sorted(set(heads) & set(parts_heads(cfg)))} "
                         "predict parts, but the study data hold no part targets (a cache exported before "
                         "the parts were kept? export it again with --export-cache)")
    pre_id = pretrain[pretrain_seed(config, seed)].run_id if strat.pretrained_trunk else None
    if source is not None:
        k = int(selection[target][source]["chosen"]) if selection else 0
        pre_id = make_spec(config, data, pretrain, source, target, fraction, seed, k, selection).run_id
    return RunSpec(
        "transfer", strategy, prop, float(fraction), int(seed), cfg, trunk_lr_scale=scale,
        pretrain_id=pre_id, data_fingerprint=data.fingerprint, candidate=int(candidate),
        min_train_steps=None if min_steps is None else int(min_steps), part=part,
        parts_fingerprint=parts_fp,
    )


def tuning_needed(config: Mapping[str, Any]) -> bool:
    """True if some strategy has more than one candidate."""
    return any(len(candidates(config, s)) > 1 for t in config["targets"] for s in strategies_for(config, t))


def plan_trials(config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec]) -> list[RunSpec]:
    """Tuning runs: each candidate x strategy x target at ``tuning.fraction`` x ``tuning.seeds``
    (not for a strategy with ``start_from``: it has one candidate and continues the tuned runs of
    its source)."""
    t = config["tuning"]
    return [
        make_spec(config, data, pretrain, strat, target, float(t["fraction"]), int(seed), k)
        for target in config["targets"]
        for strat in strategies_for(config, target)
        if start_from(config, strat) is None
        for k in range(len(candidates(config, strat)))
        for seed in t["seeds"]
    ]


def selection_from_records(
    config: Mapping[str, Any], trials: Sequence[RunSpec], store: RunStore
) -> dict[str, dict[str, dict[str, Any]]]:
    """Chosen candidate per (target, strategy): lowest mean validation Frobenius MAE.

    Returns ``{target: {strategy: {"chosen": k, "val_frobenius_mae": [mean per candidate],
    "overrides": [...]}}}``. Without tuning every choice is candidate 0. A part target is scored
    on the validation metrics of its part (the record's ``val_parts``).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in config["targets"]:
        out[target] = {}
        for strat in strategies_for(config, target):
            cands = candidates(config, strat)
            scores: list[float | None] = []
            for k in range(len(cands)):
                vals = []
                for spec in trials:
                    if spec.study_target == target and spec.strategy == strat and spec.candidate == k:
                        rec = store.load(spec.run_id)
                        if rec is None:
                            raise ValueError(f"tuning run {spec.run_id} has not finished")
                        v = val_metrics(rec, target).get("frobenius_mae")
                        vals.append(float("inf") if v is None else float(v))
                scores.append(sum(vals) / len(vals) if vals else None)
            valid = [(s, k) for k, s in enumerate(scores) if s is not None]
            chosen = min(valid)[1] if valid else 0
            out[target][strat] = {"chosen": chosen, "val_frobenius_mae": scores, "overrides": cands}
    return out


def val_metrics(record: Mapping[str, Any], target: str) -> dict[str, Any]:
    """A run record's validation metrics of a study target (a part: from ``val_parts``)."""
    if target_property(target)[1] is None:
        return dict(record.get("val") or {})
    return dict((record.get("val_parts") or {}).get(target) or {})


def plan_runs(
    config: Mapping[str, Any], data: StudyData, pretrain: Mapping[int, RunSpec],
    selection: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[RunSpec]:
    """Final runs: strategy x target x fraction x seed with the selected candidates (the
    strategies of each target, :func:`~irreptensor_ml.transfer.presets.strategies_for`). A run
    shared by a property and its part target is listed for each (same run id)."""
    out = []
    for target in config["targets"]:
        for strat in strategies_for(config, target):
            k = int(selection[target][strat]["chosen"]) if selection else 0
            for f in config["fractions"]:
                for seed in config["seeds"]:
                    out.append(make_spec(config, data, pretrain, strat, target, float(f), int(seed), k,
                                         selection))
    return out

