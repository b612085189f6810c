"""The ways of learning a target tensor that the transfer study compares.

=============  ===========================  ==================  ===================================
strategy       trunk at start               trunk trained?      heads / training data
=============  ===========================  ==================  ===================================
``scratch``    random (seeded)              yes                 target head; target data only
``frozen``     pretrained on elastic        no (frozen)         new target head; target data only
``finetune``   pretrained on elastic        yes, lr x scale     new target head; target data only
``multitask``  random (seeded)              yes                 elastic + dielectric + piezoelectric
                                                                heads on the union of materials,
                                                                each loss masked where a material
                                                                lacks that tensor
``control``    random (seeded)              no (frozen)         target head only: what a head on
                                                                an untrained trunk can do
=============  ===========================  ==================  ===================================

Two more strategies start from a *foundation* trunk, the pretrained layers of a universal
interatomic potential (SevenNet-0, :mod:`irreptensor_ml.foundation`), instead of our elastic
pretraining run; their trunk and head come from the study's ``foundation`` settings:

=======================  ===============================  ==================  =====================
strategy                 trunk at start                   trunk trained?      heads / training data
=======================  ===============================  ==================  =====================
``foundation-frozen``    SevenNet-0 (pretrained on MPtrj) no (frozen); the    new tensor-product
                                                          head trains on      head; target data only
                                                          cached features
``foundation-finetune``  SevenNet-0 (pretrained on MPtrj) yes, lr x scale     new tensor-product
                                                                              head (or, with the
                                                                              study setting
                                                                              ``start_from``, the
                                                                              trained head of the
                                                                              foundation-frozen
                                                                              run); target data
                                                                              only
=======================  ===============================  ==================  =====================

The five study strategies share one architecture (the study's ``model`` settings) and the training loop
of :class:`~irreptensor_ml.train.module.TensorLightningModule` (same masked, normalized loss).
:class:`TransferLightningModule` adds what the transfer strategies need: optimizer parameter
groups with a separate trunk learning rate (``trunk_lr = lr * trunk_lr_scale``) and a frozen
trunk that stays bit-for-bit unchanged (no gradient, no weight decay, not in the optimizer).

The random trunk of ``control`` (and the initial trunk of ``scratch`` / ``multitask``) is drawn
after ``lightning.seed_everything(seed)``, so for one seed ``control`` uses exactly the trunk
``scratch`` starts from.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch

from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.deprecation import renamed
from irreptensor_ml.model import trunk_state as model_trunk_state
from irreptensor_ml.transfer.registry import (  # noqa: F401  (re-exported)
    FOUNDATION_STRATEGIES,
    START_FROM,
    STRATEGIES,
    Strategy,
    starts_from_run,
)
from irreptensor_ml.train.module import TensorLightningModule

__all__ = [
    "FOUNDATION_STRATEGIES",
    "STRATEGIES",
    "Strategy",
    "TransferLightningModule",
    "build_module",
    "foundation_model_config",
    "START_FROM",
    "get_strategy",
    "starts_from_run",
    "trunk_state_from_model_state",
]


def foundation_model_config(
    model: Mapping[str, Any], foundation: Mapping[str, Any], target: str
) -> dict[str, Any]:
    """The ``model`` section of a foundation run (``foundation``: the study's ``foundation``
    settings, ``{"trunk": FoundationTrunk arguments, "head": head config}``): ``model`` with its trunk replaced by the
    foundation trunk (``foundation["trunk"]``; the graph ``cutoff`` kept for the check of
    :func:`~irreptensor_ml.model.build_trunk`) and the target's head set to
    ``foundation["head"]`` (``target`` is a property; ``model.outputs`` and the loss settings are
    kept, and the study adds ``parts`` where its targets need them)."""
    out = copy.deepcopy(dict(model))
    trunk = {k: v for k, v in dict(foundation.get("trunk") or {}).items() if v is not None}
    if "foundation" not in trunk:
        raise ValueError("foundation.trunk must name the pretrained potential (key 'foundation')")
    cutoff = dict(out.get("trunk") or {}).get("cutoff")
    out["trunk"] = {**trunk, **({"cutoff": cutoff} if cutoff is not None else {})}
    out["heads"] = {target: copy.deepcopy(dict(foundation.get("head") or {}))}
    return out


def get_strategy(name: str) -> Strategy:
    """The :class:`Strategy` called ``name``; ``ValueError`` naming it if unknown."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}") from None


trunk_state_from_model_state = renamed(
    model_trunk_state, "trunk_state_from_model_state", "one way to take and transfer a trunk", old_module=__name__)


class TransferLightningModule(TensorLightningModule):
    """:class:`TensorLightningModule` with a trunk learning-rate scale and an optional frozen trunk.

    Args (besides those of :class:`TensorLightningModule`):
        trunk_lr_scale: trunk learning rate = ``optim.lr * trunk_lr_scale`` (> 0); heads use
            ``optim.lr``. Ignored when the trunk is frozen.
        freeze_trunk: exclude the trunk from optimisation (``requires_grad = False``).
        monitor_property: the property whose validation loss selects the best epoch
            (:attr:`monitor` = ``"val/loss_<property>"``; for a head with parts, the loss of the
            total plus those of the parts).
        train_targets: physical training targets that fit the output maps of heads with an
            ``exp`` output or with parts (see :class:`TensorLightningModule`).
        trunk_state: pretrained trunk to start from (see :class:`TensorLightningModule`).
    """

    def __init__(
        self,
        irreps: Mapping[str, str],
        model: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        normalizers: Mapping[str, IrrepNormalizer | Mapping[str, Any]] | None = None,
        max_epochs: int = 100,
        run_config: Mapping[str, Any] | None = None,
        *,
        trunk_lr_scale: float = 1.0,
        freeze_trunk: bool = False,
        monitor_property: str | None = None,
        train_targets: Mapping[str, torch.Tensor] | None = None,
        trunk_state: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(irreps, model, loss, optim, normalizers, max_epochs, run_config,
                         train_targets=train_targets, trunk_state=trunk_state)
        if not (isinstance(trunk_lr_scale, (int, float)) and trunk_lr_scale > 0 and math.isfinite(trunk_lr_scale)):
            raise ValueError(f"trunk_lr_scale must be a finite number > 0, got {trunk_lr_scale!r}")
        monitor_property = monitor_property or next(iter(irreps))
        if monitor_property not in irreps:
            raise ValueError(
                f"monitor_property {monitor_property!r} is not a trained property {sorted(irreps)}"
            )
        self.trunk_lr_scale = float(trunk_lr_scale)
        self.monitor_property = monitor_property
        self.trunk_frozen = bool(freeze_trunk)
        self.model.freeze_trunk(self.trunk_frozen)

    @property
    def monitor(self) -> str:
        """Logged metric that selects the best epoch: ``val/loss_<monitor_property>``."""
        return f"val/loss_{self.monitor_property}"

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: heads at ``lr``; the trunk at ``lr * trunk_lr_scale`` unless
        frozen (then it is left out)."""
        lr = float(self.optim_config.get("lr", 3e-3))
        trunk_ids = {id(p) for p in self.model.trunk.parameters()}
        heads = [p for p in self.parameters() if p.requires_grad and id(p) not in trunk_ids]
        groups = [{"params": heads, "lr": lr, "name": "heads"}] if heads else []
        if not self.trunk_frozen:
            trunk = [p for p in self.model.trunk.parameters() if p.requires_grad]
            if trunk:
                groups.append({"params": trunk, "lr": lr * self.trunk_lr_scale, "name": "trunk"})
        if not groups:
            raise ValueError("no trainable parameters (trunk frozen and no heads?)")
        return groups


def heads_for(strategy: Strategy, target: str, properties: Sequence[str]) -> list[str]:
    """Properties that get a head: all of ``properties`` for multitask, else the target only."""
    if target not in properties:
        raise ValueError(f"target {target!r} is not one of the study properties {list(properties)}")
    return list(properties) if strategy.all_heads else [target]


def build_module(
    strategy: str | Strategy,
    target: str,
    irreps: Mapping[str, str],
    train_config: Mapping[str, Any],
    normalizers: Mapping[str, IrrepNormalizer],
    *,
    trunk_state: Mapping[str, torch.Tensor] | None = None,
    trunk_lr_scale: float = 1.0,
    properties: Sequence[str] | None = None,
    train_targets: Mapping[str, torch.Tensor] | None = None,
) -> TransferLightningModule:
    """Build the Lightning module of one strategy.

    Call ``lightning.seed_everything(seed)`` first: the random trunk and the heads are drawn here.

    Args:
        strategy: strategy name or :class:`Strategy`.
        target: the property the run is evaluated on (monitored for model selection).
        irreps: ``{property: irreps}`` of all study properties.
        train_config: resolved training config (``model``, ``loss``, ``optim``, ``trainer``);
            for a foundation strategy its ``model`` already holds the foundation trunk and head
            (:func:`foundation_model_config`).
        normalizers: ``{property: IrrepNormalizer}`` for every head (fitted on the run's
            training targets).
        trunk_state: pretrained trunk state (``trunk.*`` keys without the prefix,
            :func:`irreptensor_ml.model.trunk_state`) or trunk module, copied into the new model with
            :func:`irreptensor_ml.model.transfer_trunk` (the way ``irreptensor-ml train`` copies
            ``model.pretrained_trunk``); required by ``frozen``/``finetune`` and refused by the
            others.
        trunk_lr_scale: trunk learning-rate factor (only ``finetune`` and
            ``foundation-finetune`` may use a value != 1).
        properties: study properties (default: all keys of ``irreps``).
        train_targets: ``{key: (n, dim)}`` physical training targets fitting the output maps of
            the heads with an ``exp`` output or with parts (``"<property>_<part>"`` keys for the
            parts; :func:`irreptensor_ml.transfer.runner.fit_targets`); the other heads use
            ``normalizers``.

    The training config's per-property settings -- ``model.heads``, ``model.outputs``,
    ``loss.weights`` and a per-property ``loss.type`` mapping -- are restricted to the run's heads,
    so one study config serves runs with different heads (single-task and multitask).
    """
    strat = strategy if isinstance(strategy, Strategy) else get_strategy(strategy)
    props = list(properties) if properties is not None else list(irreps)
    heads = heads_for(strat, target, props)
    if strat.pretrained_trunk and trunk_state is None:
        raise ValueError(f"strategy {strat.name!r} needs a pretrained trunk_state")
    if not strat.pretrained_trunk and trunk_state is not None:
        raise ValueError(f"strategy {strat.name!r} starts from a random trunk; got a trunk_state")
    if trunk_lr_scale != 1.0 and not strat.scales_trunk_lr:
        raise ValueError(
            f"trunk_lr_scale={trunk_lr_scale} applies only to finetune and foundation-finetune, "
            f"not to {strat.name!r}"
        )
    missing = sorted(set(heads) - set(normalizers))
    if missing:
        raise ValueError(f"no normalizer for head(s) {missing}")
    if strat.foundation != ("foundation" in dict(train_config["model"].get("trunk") or {})):
        raise ValueError(
            f"strategy {strat.name!r} " + ("needs" if strat.foundation else "cannot use")
            + " a foundation trunk config (model.trunk.foundation); see foundation_model_config"
        )
    model_cfg = dict(train_config["model"])
    model_cfg["heads"] = {p: v for p, v in dict(model_cfg.get("heads") or {}).items() if p in heads}
    if model_cfg.get("outputs"):
        model_cfg["outputs"] = {p: v for p, v in dict(model_cfg["outputs"]).items() if p in heads}
    loss_cfg = dict(train_config.get("loss") or {})
    loss_cfg["weights"] = {p: w for p, w in dict(loss_cfg.get("weights") or {}).items() if p in heads}
    if isinstance(loss_cfg.get("type"), Mapping):
        loss_cfg["type"] = {p: t for p, t in dict(loss_cfg["type"]).items() if p in heads}
    from irreptensor_ml.transfer.studydata import target_property

    fit = {k: v for k, v in dict(train_targets or {}).items() if target_property(k)[0] in heads}
    module = TransferLightningModule(
        {p: irreps[p] for p in heads},
        model=model_cfg,
        loss=loss_cfg,
        optim=dict(train_config["optim"]),
        normalizers={p: normalizers[p] for p in heads},
        max_epochs=int(train_config["trainer"]["max_epochs"]),
        run_config=dict(train_config),
        trunk_lr_scale=trunk_lr_scale,
        freeze_trunk=not strat.train_trunk,
        monitor_property=target,
        train_targets=fit or None,
        trunk_state=trunk_state,  # copied by irreptensor_ml.model.transfer_trunk (architecture checked)
    )
    return module
