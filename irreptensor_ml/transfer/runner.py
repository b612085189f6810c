"""Execute one run of the transfer study: select data, build the strategy's model, train, evaluate.

A run is described by a :class:`RunSpec` (plain data; its :attr:`RunSpec.run_id` is a hash of
everything that determines the result). :func:`execute_run` trains it with the Lightning trainer
of ``irreptensor-ml train`` (:func:`irreptensor_ml.train.build_trainer`: early stopping and
best-epoch selection by ``ModelCheckpoint`` on the validation loss of the run's target property),
exports the best model as a weights-only ``model.pt`` (:func:`irreptensor_ml.train.save_model`
format, so :func:`irreptensor_ml.train.load_model` and ``predict`` read it), and returns a
JSON-ready record with the validation metrics. :func:`evaluate_test` evaluates a stored model
once on the test set of its target and returns the metrics and the per-material predictions.

Data of a run (``seed`` also draws the training subsample):

* pretraining (``kind="pretrain"``): all training samples of the pretraining property (elastic);
* ``scratch`` / ``frozen`` / ``finetune`` / ``control``: the training samples of the target whose
  material is in the kept ``fraction`` of the target's training materials;
* ``multitask``: every training sample of the union with its targets of all three properties,
  except that the target's tensor is removed from samples whose material is not in the kept
  fraction (the same materials as the single-task runs of that seed); other properties are used
  in full.

* ``foundation-frozen`` / ``foundation-finetune``: as ``scratch`` (target data only), with the
  foundation trunk and head of the run's ``train_config["model"]``.  A ``foundation-frozen`` run
  never runs its trunk: the trunk's per-atom features of every crystal of the study are computed
  once and cached (:func:`study_node_features`), and training, validation and the test pass read
  them (:class:`~irreptensor_ml.foundation.cache.CachedFeatureTrunk`); the saved model holds the
  real (unchanged) trunk, so it predicts from structures like any other.

Validation always uses the full validation set of the target; the test set is the full test set
of the target, identical for all strategies, fractions and seeds (paired comparisons).

Parts. A head with ``parts`` (``model.heads.dielectric.parts: true``, the shipped dielectric
model's head) predicts the property's additive parts and their sum; its run trains on the part
targets too (the loss of the total plus those of the parts, :mod:`irreptensor_ml.train.module`)
and its record holds the metrics of every part beside those of the total (``val_parts``,
``test_parts``: ``{"dielectric_electronic": {...}, "dielectric_ionic": {...}}``, the electronic
part with the refractive-index MAE). A study target that is a part (``dielectric_electronic``) is
reported from these: its runs are the runs of its property with that head, so a study with both
``dielectric`` and ``dielectric_electronic`` trains each dielectric run once (:attr:`RunSpec.part`
names the reported part and is not part of the run id).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

import lightning
from torch.utils.data import DataLoader

from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.evaluate import collect_predictions, compute_metrics
from irreptensor_ml.metrics import frobenius_norm
from irreptensor_ml.model import trunk_state as model_trunk_state
from irreptensor_ml.train.checkpoint import load_model, save_model
from irreptensor_ml.train.provenance import source_revision
from irreptensor_ml.train.trainer import MonitorHistory, build_trainer
from irreptensor_ml.transfer.strategies import (
    build_module,
    get_strategy,
    heads_for,
    starts_from_run,
)
from irreptensor_ml.data.records import PARTS, part_key
from irreptensor_ml.transfer.studydata import PROPERTIES, StudyData

logger = logging.getLogger(__name__)

__all__ = ["RUN_KINDS", "RunSpec", "execute_run", "evaluate_test", "EXECUTION_ONLY_TRAINER_KEYS"]

#: bump when the meaning of a run changes (then every run id changes and runs are redone)
STUDY_CODE_VERSION = "transfer-1"
RUN_KINDS: tuple[str, ...] = ("pretrain", "transfer")
#: trainer settings that change where/how fast a run executes but not what it computes; they
#: are left out of the run id so a study can move between machines (CPU <-> GPU) and resume.
EXECUTION_ONLY_TRAINER_KEYS: tuple[str, ...] = (
    "accelerator", "devices", "num_nodes", "strategy", "num_threads", "enable_progress_bar",
    "log_every_n_steps",
)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run.

    Attributes:
        kind: ``"pretrain"`` (elastic model whose trunk the transfer strategies reuse) or
            ``"transfer"``.
        strategy: a name of :data:`~irreptensor_ml.transfer.strategies.STRATEGIES` (pretraining
            runs use ``"scratch"``).
        target: evaluated (and, single-task, trained) property.
        fraction: kept fraction of the target's training materials, in (0, 1].
        seed: seeds the training subsample, the initialisation and the batch order.
        train_config: resolved training config (``model``, ``loss``, ``optim``, ``trainer``,
            ``data``, ``seed``), with the candidate hyper-parameters applied.
        trunk_lr_scale: trunk learning-rate factor (finetune).
        pretrain_id: run id of the run this one starts from: the pretraining run whose trunk
            is reused (frozen/finetune), or, for ``foundation-finetune`` with ``start_from``,
            the ``foundation-frozen`` run whose whole model (trunk and trained head) it
            fine-tunes (linear probing, then fine-tuning).
        data_fingerprint: :attr:`StudyData.fingerprint` of the data.
        candidate: index of the tuning candidate (for reports; its settings are in
            ``train_config``/``trunk_lr_scale``).
        min_train_steps: this run's lower bound on optimizer steps (:func:`epochs_for`);
            ``None``: the study's ``min_train_steps``.
        part: the part of the target whose metrics the study reports for this run (``"electronic"``
            for the study target ``dielectric_electronic``), or ``None`` for the total. It does not
            change the run (its head predicts every part either way: ``model.heads.<target>.parts``
            must be set), so it is left out of :attr:`run_id`: the runs of ``dielectric`` and
            ``dielectric_electronic`` with the same settings are one run.
        parts_fingerprint: :attr:`StudyData.parts_fingerprint` of the data, for runs with a head
            that predicts parts (they train on the part targets); ``""`` otherwise.
    """

    kind: str
    strategy: str
    target: str
    fraction: float
    seed: int
    train_config: Mapping[str, Any]
    trunk_lr_scale: float = 1.0
    pretrain_id: str | None = None
    data_fingerprint: str = ""
    candidate: int = 0
    min_train_steps: int | None = None
    part: str | None = None
    parts_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.kind not in RUN_KINDS:
            raise ValueError(f"RunSpec.kind must be one of {RUN_KINDS}, got {self.kind!r}")
        strat = get_strategy(self.strategy)
        if self.target not in PROPERTIES:
            raise ValueError(f"RunSpec.target must be one of {PROPERTIES}, got {self.target!r}")
        if not 0 < float(self.fraction) <= 1:
            raise ValueError(f"RunSpec.fraction must be in (0, 1], got {self.fraction}")
        if self.kind == "pretrain" and (self.strategy != "scratch" or self.pretrain_id):
            raise ValueError("a pretrain run uses strategy 'scratch' and no pretrain_id")
        if strat.pretrained_trunk and self.kind == "transfer" and not self.pretrain_id:
            raise ValueError(f"strategy {self.strategy!r} needs a pretrain_id")
        if not strat.pretrained_trunk and self.pretrain_id and not starts_from_run(strat):
            raise ValueError(f"strategy {self.strategy!r} does not use a pretrained trunk")
        if self.min_train_steps is not None and not (
            isinstance(self.min_train_steps, int) and self.min_train_steps >= 0
        ):
            raise ValueError(f"RunSpec.min_train_steps must be an integer >= 0, got {self.min_train_steps!r}")
        if self.part is not None:
            if self.part not in PARTS.get(self.target, ()):
                raise ValueError(f"RunSpec.part: {self.target!r} has no part {self.part!r} "
                                 f"(known: {list(PARTS.get(self.target, ()))})")
            if self.target not in parts_heads(self.train_config):
                raise ValueError(f"RunSpec.part={self.part!r} needs a head that predicts the parts "
                                 f"(model.heads.{self.target}.parts: true)")

    @property
    def study_target(self) -> str:
        """The target the study reports: ``target``, or ``"<target>_<part>"`` for a part."""
        return self.target if self.part is None else part_key(self.target, self.part)

    def identity(self) -> dict[str, Any]:
        """The JSON-ready content hashed into :attr:`run_id` (execution-only settings removed)."""
        cfg = copy.deepcopy(dict(self.train_config))
        trainer = dict(cfg.get("trainer") or {})
        for key in EXECUTION_ONLY_TRAINER_KEYS:
            trainer.pop(key, None)
        cfg["trainer"] = trainer
        data = dict(cfg.get("data") or {})
        for key in ("cache_dir", "progress", "num_workers", "data_root"):
            data.pop(key, None)
        cfg["data"] = data
        extra = {} if self.min_train_steps is None else {"min_train_steps": int(self.min_train_steps)}
        if self.parts_fingerprint:
            extra["parts_fingerprint"] = self.parts_fingerprint
        return {
            **extra,  # only when set, so the ids of runs planned before the fields existed stay valid
            "code_version": STUDY_CODE_VERSION,
            "kind": self.kind,
            "strategy": self.strategy,
            "target": self.target,
            "fraction": float(self.fraction),
            "seed": int(self.seed),
            "train_config": cfg,
            "trunk_lr_scale": float(self.trunk_lr_scale),
            "pretrain_id": self.pretrain_id,
            "data_fingerprint": self.data_fingerprint,
        }

    @property
    def run_id(self) -> str:
        """``<kind-or-strategy>-<target>-f<fraction>-s<seed>-<16 hex of sha256(identity)>``."""
        digest = hashlib.sha256(
            json.dumps(self.identity(), sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        head = "pretrain" if self.kind == "pretrain" else self.strategy
        return f"{head}-{self.target}-f{float(self.fraction):g}-s{int(self.seed)}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["train_config"] = json.loads(json.dumps(self.train_config, default=str))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        """Rebuild from :meth:`to_dict` output."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"RunSpec.from_dict: unknown key(s) {unknown}")
        return cls(**dict(d))


# ---------------------------------------------------------------------------------- data


def parts_heads(train_config: Mapping[str, Any]) -> list[str]:
    """Properties whose head in ``train_config["model"]["heads"]`` predicts the parts."""
    heads = dict((train_config.get("model") or {}).get("heads") or {})
    return [p for p, h in heads.items() if isinstance(h, Mapping) and h.get("parts") and PARTS.get(p)]


def _target_keys(heads: Sequence[str], train_config: Mapping[str, Any]) -> list[str]:
    """The run's heads and the part keys of those heads that predict parts (batch targets)."""
    with_parts = set(parts_heads(train_config))
    return [*heads, *[part_key(p, part) for p in heads if p in with_parts for part in PARTS[p]]]


def run_datasets(spec: RunSpec, data: StudyData) -> dict[str, Any]:
    """The run's train / val / test :class:`GraphTargetDataset` and head properties.

    Returns ``{"heads": [...], "keys": [...], "train": ds, "val": ds, "test": ds,
    "n_train_target": int, "n_train_materials": int}``; ``keys`` are the heads and the part targets
    of the heads that predict parts (the datasets hold them too).
    """
    strat = get_strategy(spec.strategy)
    heads = heads_for(strat, spec.target, list(PROPERTIES)) if spec.kind == "transfer" else [spec.target]
    keys = _target_keys(heads, spec.train_config)
    target_keys = _target_keys([spec.target], spec.train_config)
    kept = data.train_subset(spec.target, spec.fraction, spec.seed)
    if strat.all_heads and spec.kind == "transfer":
        all_train = data.indices("train")
        kept_set = set(kept)
        dropped = {k for k in data.indices("train", spec.target) if k not in kept_set}
        train = data.dataset(all_train, keys, drop={k: dropped for k in target_keys}, id_property=spec.target)
    else:
        train = data.dataset(kept, keys, id_property=spec.target)
    val = data.dataset(data.indices("val", spec.target), keys, id_property=spec.target)
    test = data.dataset(data.indices("test", spec.target), target_keys, id_property=spec.target)
    if train.count(spec.target) == 0:
        raise ValueError(f"run {spec.run_id}: no training sample of {spec.target!r}")
    if len(val) == 0:
        raise ValueError(f"run {spec.run_id}: no validation sample of {spec.target!r}")
    return {
        "heads": heads,
        "keys": keys,
        "train": train,
        "val": val,
        "test": test,
        "n_train_target": train.count(spec.target),
        "n_train_materials": len({data.material_keys[k] for k in kept}),
    }


def _loader(dataset: Any, data: StudyData, props: Sequence[str], batch_size: int, dtype: torch.dtype,
            shuffle: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=0,
        collate_fn=data.collate_fn(props, dtype),
    )


# ---------------------------------------------------------------------------------- training


def epochs_for(train_config: Mapping[str, Any], n_train: int, min_train_steps: int) -> tuple[int, int]:
    """``(max_epochs, early_stopping_patience)`` for a training set of ``n_train`` samples.

    Both are ``trainer.max_epochs`` / ``trainer.early_stopping_patience``, scaled up by the same
    factor when ``max_epochs`` epochs would make fewer than ``min_train_steps`` optimizer steps
    (so small learning-curve fractions still get a minimum number of updates).
    """
    trainer = train_config["trainer"]
    epochs = int(trainer["max_epochs"])
    patience = int(trainer["early_stopping_patience"])
    if epochs < 1 or patience < 1:
        raise ValueError(f"max_epochs and early_stopping_patience must be >= 1, got {epochs}, {patience}")
    steps_per_epoch = max(1, math.ceil(n_train / int(train_config["data"]["batch_size"])))
    if min_train_steps > 0 and epochs * steps_per_epoch < min_train_steps:
        factor = min_train_steps / (epochs * steps_per_epoch)
        return math.ceil(epochs * factor), math.ceil(patience * factor)
    return epochs, patience


def _train(
    spec: RunSpec,
    module: lightning.LightningModule,
    cfg: Mapping[str, Any],
    train_loader: DataLoader,
    val_loader: DataLoader,
    max_epochs: int,
    patience: int,
    workdir: Path,
) -> tuple[int, float, list[float], int]:
    """Train ``module`` with the trainer of :func:`irreptensor_ml.train.build_trainer` (one device,
    no logger, no sanity check) and load the weights of its best epoch: the lowest finite
    ``module.monitor`` (Lightning's ``ModelCheckpoint``, weights only, in a temporary folder
    under ``workdir`` removed afterwards; early stopping on the same metric).

    Returns ``(best epoch, best monitored value, monitored value of every epoch, epochs run)``;
    ``ValueError`` when no epoch has a finite monitored value."""
    history = MonitorHistory(module.monitor)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".train-", dir=workdir) as tmp:
        trainer = build_trainer(
            cfg, tmp, module.monitor,
            max_epochs=max_epochs, patience=patience, logging=False, resumable=False,
            progress_bar=bool(cfg["trainer"].get("enable_progress_bar", False)), callbacks=[history],
            devices=1, num_nodes=1, strategy="auto", num_sanity_val_steps=0, enable_model_summary=False,
        )
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        ckpt = trainer.checkpoint_callback
        # a NaN value is stored as +inf and never replaces a finite best; early stopping ends the
        # training at the first non-finite value, so a non-finite best means no finite epoch
        score = None if ckpt is None or ckpt.best_model_score is None else float(ckpt.best_model_score)
        if score is None or not math.isfinite(score) or not ckpt.best_model_path:
            raise ValueError(f"run {spec.run_id}: no finite validation loss in {len(history.values)} epochs")
        best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    return int(best["epoch"]), score, history.values, int(trainer.current_epoch)


def _fit_normalizers(train: Any, heads: Sequence[str], irreps: Mapping[str, str]) -> dict[str, IrrepNormalizer]:
    return {p: IrrepNormalizer().fit(train.targets(p), irreps[p]) for p in heads}


def fit_targets(train: Any, heads: Sequence[str], train_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Physical training targets that fit the output maps of the heads that need them: those with
    a non-linear output transform (``model.outputs.<p>: exp``) or with parts.

    Returns ``{p: (n, dim)}`` and, for a head with parts, ``{"<p>_<part>": (n, dim)}`` over the
    same rows: the training samples that have the total and every part (the module's loss uses
    every sample; only the fit of the normalization needs complete rows). Linear heads without
    parts are left out: their normalization is the physical normalizer (:func:`_fit_normalizers`,
    the same numbers)."""
    outputs = dict((train_config.get("model") or {}).get("outputs") or {})
    with_parts = set(parts_heads(train_config))
    out: dict[str, torch.Tensor] = {}
    for p in heads:
        if outputs.get(p, "linear") == "linear" and p not in with_parts:
            continue
        keys = [p, *(part_key(p, part) for part in PARTS[p])] if p in with_parts else [p]
        rows = [t for _, t in train.samples if all(k in t for k in keys)]
        if not rows:
            raise ValueError(f"no training sample has {' and '.join(keys)}: cannot fit the output map of {p!r}")
        for k in keys:
            out[k] = torch.stack([t[k] for t in rows])
    return out


def study_node_features(
    data: StudyData,
    trunk: torch.nn.Module,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
) -> Any:
    """Per-atom features of ``trunk`` for every crystal of the study data (rows in sample order),
    from ``<cache_dir>/foundation/study-<key>.pt`` or computed once (tqdm bar with ``progress``)
    and stored there; the key covers the trunk's config and weights and the graphs' content."""
    from irreptensor_ml.foundation.cache import cached_node_features

    return cached_node_features(
        trunk, data.graphs, cache_dir=cache_dir, name="study", dtype=torch.float32, progress=progress,
    )


def _cached_trunk(data: StudyData, trunk: torch.nn.Module, target: str,
                  cache_dir: str | os.PathLike[str] | None) -> torch.nn.Module:
    """A :class:`CachedFeatureTrunk` standing in for ``trunk`` on the samples of ``target`` (the
    run's datasets label crystals with :meth:`StudyData.sample_id` of the target)."""
    from irreptensor_ml.foundation.cache import CachedFeatureTrunk

    features = study_node_features(data, trunk, cache_dir)
    index_of = {data.sample_id(k, target): k for side in ("train", "val", "test") for k in data.indices(side, target)}
    return CachedFeatureTrunk(features, index_of, trunk.irreps_out, dict(trunk.config))


def _uses_cached_features(spec: RunSpec) -> bool:
    strat = get_strategy(spec.strategy)
    return spec.kind == "transfer" and strat.foundation and not strat.train_trunk


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def execute_run(
    spec: RunSpec,
    data: StudyData,
    model_path: str | os.PathLike[str],
    *,
    pretrained_model: str | os.PathLike[str] | None = None,
    min_train_steps: int = 0,
    eval_batch_size: int = 64,
    feature_cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train the run, write its best model to ``model_path``, return its record (no test metrics).

    Args:
        spec: the run.
        data: the study data (its fingerprint must equal ``spec.data_fingerprint``).
        model_path: where the weights-only model file goes.
        pretrained_model: model file of the pretraining run (frozen / finetune).
        min_train_steps: see :func:`epochs_for`.
        eval_batch_size: batch size of the validation metrics pass.
        feature_cache_dir: cache directory of a ``foundation-frozen`` run's trunk features
            (:func:`study_node_features`; default ``$IRREPTENSOR_CACHE`` or
            ``~/.cache/irreptensor``).

    The record holds ``run_id``, ``spec``, ``train`` (sizes, epochs, best epoch, best monitored
    validation loss, its history), ``val`` (all metrics of the target on the validation set,
    physical units), ``wall_time_s``, ``device``, ``torch_threads``, ``source`` (git revision of the
    code, :func:`~irreptensor_ml.train.provenance.source_revision`) and ``model_file``.
    """
    if spec.data_fingerprint and spec.data_fingerprint != data.fingerprint:
        raise ValueError(f"run {spec.run_id} was planned for other data (fingerprint mismatch)")
    started = time.time()
    cfg = spec.train_config
    threads = cfg["trainer"].get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    lightning.seed_everything(int(spec.seed), workers=True, verbose=False)
    if spec.parts_fingerprint and spec.parts_fingerprint != data.parts_fingerprint:
        raise ValueError(f"run {spec.run_id} was planned for other part targets (parts fingerprint mismatch)")
    sets = run_datasets(spec, data)
    heads, keys = sets["heads"], sets["keys"]
    normalizers = _fit_normalizers(sets["train"], heads, data.irreps)
    train_targets = fit_targets(sets["train"], heads, cfg)
    dtype = _DTYPES[str(cfg["data"].get("dtype", "float32"))]
    batch_size = int(cfg["data"]["batch_size"])

    trunk_state = None
    strat = get_strategy(spec.strategy)
    start_state = None
    if starts_from_run(strat) and spec.pretrain_id:
        if pretrained_model is None or not Path(pretrained_model).is_file():
            raise ValueError(f"run {spec.run_id} starts from run {spec.pretrain_id}, whose model file "
                             f"{pretrained_model} is missing")
        start_state = torch.load(pretrained_model, map_location="cpu", weights_only=True)["state_dict"]
    if strat.pretrained_trunk and spec.kind == "transfer":
        if pretrained_model is None or not Path(pretrained_model).is_file():
            raise ValueError(f"run {spec.run_id} needs the pretrained model file, got {pretrained_model}")
        payload = torch.load(pretrained_model, map_location="cpu", weights_only=True)
        trunk_state = model_trunk_state(payload["state_dict"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn constants at the training precision
    try:
        module = build_module(
            spec.strategy, spec.target, data.irreps, cfg, normalizers,
            trunk_state=trunk_state, trunk_lr_scale=spec.trunk_lr_scale, properties=heads,
            train_targets=train_targets,
        )
    finally:
        torch.set_default_dtype(previous)
    if start_state is not None:
        try:
            module.model.load_state_dict(start_state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"run {spec.run_id}: the model of run {spec.pretrain_id} it starts from "
                             f"does not match its architecture: {exc}") from None
    module = module.to(dtype)
    real_trunk = None
    if _uses_cached_features(spec):  # the frozen trunk's features are read, not recomputed
        real_trunk = module.model.trunk
        module.model.trunk = _cached_trunk(data, real_trunk, spec.target, feature_cache_dir)
    if spec.min_train_steps is not None:
        min_train_steps = spec.min_train_steps
    max_epochs, patience = epochs_for(cfg, len(sets["train"]), min_train_steps)
    module.max_epochs = max_epochs  # cosine schedule length follows the scaled epochs
    train_loader = _loader(sets["train"], data, keys, batch_size, dtype, shuffle=True)
    val_loader = _loader(sets["val"], data, keys, batch_size, dtype, shuffle=False)
    best_epoch, best_val_loss, history, epochs_run = _train(
        spec, module, cfg, train_loader, val_loader, max_epochs, patience, Path(model_path).parent,
    )
    module = module.cpu().eval()

    model = module.model
    target_keys = _target_keys([spec.target], cfg)
    val_target = data.dataset(data.indices("val", spec.target), target_keys, id_property=spec.target)
    val_all = compute_metrics(collect_predictions(
        model, _loader(val_target, data, target_keys, eval_batch_size, dtype, shuffle=False),
        [spec.target],
    ))
    val_metrics = val_all[spec.target]
    val_parts = {k: {m: _finite(v) for m, v in val_all[k].items()} for k in target_keys[1:] if k in val_all}
    num_trainable = sum(p.numel() for g in module.param_groups() for p in g["params"])
    if real_trunk is not None:
        model.trunk = real_trunk  # the saved model predicts from structures
    train_info = {
        "heads": heads,
        "n_train_samples": len(sets["train"]),
        "n_train_target": sets["n_train_target"],
        "n_train_materials_target": sets["n_train_materials"],
        "n_val": sets["val"].count(spec.target),
        "n_test": sets["test"].count(spec.target),
        "max_epochs": max_epochs,
        "early_stopping_patience": patience,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "monitor": module.monitor,
        "best_val_loss": best_val_loss,
        "val_loss_history": [_finite(v) for v in history],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable_parameters": num_trainable,
    }
    wall = time.time() - started
    info = {"run_id": spec.run_id, "strategy": spec.strategy, "kind": spec.kind, **train_info}
    saved_config = json.loads(json.dumps(dict(cfg), default=str))
    saved_config.setdefault("transfer", {}).update(
        {"strategy": spec.strategy, "target": spec.target, "fraction": spec.fraction, "seed": spec.seed,
         "trunk_lr_scale": spec.trunk_lr_scale, "pretrain_id": spec.pretrain_id}
    )
    save_model(model_path, model, saved_config, info)
    return {
        "run_id": spec.run_id,
        "status": "finished",
        # the run, not the study target it was executed for (``part`` is not part of the run)
        "spec": {**spec.to_dict(), "part": None},
        "train": train_info,
        "val": {k: _finite(v) for k, v in val_metrics.items()},
        **({"val_parts": val_parts} if val_parts else {}),
        "wall_time_s": round(wall, 3),
        "device": _device_name(),
        "torch_threads": torch.get_num_threads(),
        "source": source_revision(),  # the code that ran it (sha, "+dirty" for uncommitted code)
        "model_file": Path(model_path).name,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def evaluate_test(
    spec: RunSpec,
    data: StudyData,
    model_path: str | os.PathLike[str],
    *,
    eval_batch_size: int = 64,
    feature_cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Evaluate a stored run model once on the test set of its target (a ``foundation-frozen``
    model on its trunk's cached features, see :func:`execute_run`).

    Returns ``(metrics, predictions)``: all metrics of :func:`irreptensor_ml.metrics.tensor_metrics`
    (physical units) and ``{"property", "sample_ids", "frobenius_error", "true_irreps",
    "pred_irreps"}`` per test material, in the fixed order of the test set. A model whose head
    predicts parts adds ``predictions["parts"] = {"<target>_<part>": {"metrics", "sample_ids",
    "frobenius_error", "true_irreps", "pred_irreps"}}`` (the test materials that have the part).
    """
    model, _, config = load_model(model_path)
    dtype = next(model.parameters()).dtype
    if _uses_cached_features(spec):
        model.trunk = _cached_trunk(data, model.trunk, spec.target, feature_cache_dir)
    keys = [spec.target, *(part_key(spec.target, part) for part in model.outputs[spec.target].parts)]
    test = data.dataset(data.indices("test", spec.target), keys, id_property=spec.target)
    if len(test) == 0:
        raise ValueError(f"no test sample of {spec.target!r}")
    preds = collect_predictions(
        model, _loader(test, data, keys, eval_batch_size, dtype, shuffle=False),
        [spec.target],
    )
    all_metrics = compute_metrics(preds)

    def entry(key: str) -> dict[str, Any]:
        p = preds[key]
        return {
            "sample_ids": list(p.material_ids),
            "frobenius_error": [float(e) for e in frobenius_norm(p.pred - p.true)],
            "true_irreps": np.asarray(p.true_irreps).tolist(),
            "pred_irreps": np.asarray(p.pred_irreps).tolist(),
        }

    metrics = {k: _finite(v) for k, v in all_metrics[spec.target].items()}
    out = {"property": spec.target, **entry(spec.target)}
    parts = {k: {"metrics": {m: _finite(v) for m, v in all_metrics[k].items()}, **entry(k)}
             for k in keys[1:] if k in preds}
    if parts:
        out["parts"] = parts
    return metrics, out
