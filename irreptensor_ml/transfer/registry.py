"""The strategies of the transfer study as plain data, without torch.

:mod:`irreptensor_ml.transfer.presets` validates study configs from this registry without importing
torch; :mod:`irreptensor_ml.transfer.strategies` builds the models of the same entries (its module
docstring describes each strategy).
"""

from __future__ import annotations

import dataclasses

from irreptensor_ml.metrics import PARTS, PROPERTIES, part_key

__all__ = ["FOUNDATION_STRATEGIES", "PART_TARGETS", "PRETRAINED_STRATEGIES", "SCALED_STRATEGIES", "START_FROM", "STRATEGIES",
           "Strategy", "starts_from_run", "target_property"]


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a strategy builds and trains its model.

    Attributes:
        name: strategy name.
        pretrained_trunk: the trunk starts from the study's pretrained (elastic) trunk.
        train_trunk: the trunk's parameters are optimised.
        all_heads: one head per study property, trained jointly (multitask); otherwise only the
            target's head.
        description: one line for reports.
        foundation: the trunk is the study's foundation trunk (a pretrained potential, see
            :func:`foundation_model_config`), not one of our trunks.
    """

    name: str
    pretrained_trunk: bool
    train_trunk: bool
    all_heads: bool
    description: str
    foundation: bool = False

    @property
    def scales_trunk_lr(self) -> bool:
        """Whether the strategy trains a pretrained trunk (its ``trunk_lr_scale`` applies)."""
        return self.train_trunk and (self.pretrained_trunk or self.foundation)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("scratch", False, True, False, "new trunk + head trained on the target only"),
        Strategy("frozen", True, False, False, "elastic-pretrained trunk frozen, new head trained"),
        Strategy("finetune", True, True, False, "elastic-pretrained trunk + new head trained"),
        Strategy("multitask", False, True, True,
                 "one trunk, three heads trained jointly on the union, masked losses"),
        Strategy("control", False, False, False, "random frozen trunk, head trained"),
        Strategy("foundation-frozen", False, False, False,
                 "SevenNet-0 trunk frozen, new head trained on its cached features", foundation=True),
        Strategy("foundation-finetune", False, True, False,
                 "SevenNet-0 trunk + new head trained", foundation=True),
    )
}

#: strategies whose trunk is the foundation trunk
FOUNDATION_STRATEGIES: tuple[str, ...] = tuple(n for n, s in STRATEGIES.items() if s.foundation)

#: ``{strategy: strategies whose finished run it may start from}`` (the study's ``start_from``
#: setting): ``foundation-finetune`` continues the ``foundation-frozen`` run of the same target,
#: fraction and seed -- its trained head on the pretrained trunk -- and then trains everything
#: ("linear probing, then fine-tuning": a fresh random head would first pull the pretrained
#: features towards itself, and needs many more of the expensive fine-tuning steps).
START_FROM: dict[str, tuple[str, ...]] = {"foundation-finetune": ("foundation-frozen",)}


def starts_from_run(strategy: str | Strategy) -> bool:
    """Whether ``strategy`` may start from another run's whole model (:data:`START_FROM`)."""
    return (strategy.name if isinstance(strategy, Strategy) else strategy) in START_FROM


#: strategies that start from the study's own (elastic) pretraining run
PRETRAINED_STRATEGIES: tuple[str, ...] = tuple(n for n, s in STRATEGIES.items() if s.pretrained_trunk)

#: strategies that take a trunk learning-rate scale (``trunk_lr_scale``)
SCALED_STRATEGIES: tuple[str, ...] = tuple(n for n, s in STRATEGIES.items() if s.scales_trunk_lr)


#: ``{part key: (property, part)}`` of the properties' additive parts (``"dielectric_electronic"``
#: -> ``("dielectric", "electronic")``): study targets besides the properties.
PART_TARGETS: dict[str, tuple[str, str]] = {
    part_key(p, part): (p, part) for p in PROPERTIES for part in PARTS.get(p, ())
}


def target_property(key: str) -> tuple[str, str | None]:
    """``(property, part)`` of a target key: ``"dielectric_electronic"`` -> ``("dielectric",
    "electronic")``, ``"dielectric"`` -> ``("dielectric", None)``."""
    return PART_TARGETS.get(key, (key, None))
