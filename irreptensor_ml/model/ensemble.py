"""An ensemble of trained predictors: the mean of their physical outputs.

Models trained from different seeds on ~1,000 crystals disagree by about as much as their error;
their mean is usually more accurate than a typical member (compare ``ensemble`` with the seeds in
``results/final/summary.json``) and keeps the admissibility of ``exp`` outputs: a mean of matrices with eigenvalues above 1
(or positive definite) has eigenvalues above 1 (is positive definite), since the smallest
eigenvalue is concave.  A :class:`TensorEnsemble` has the inference interface of a
:class:`~irreptensor_ml.model.predictor.TensorPredictor` (``forward``, ``heads``, ``outputs``,
``properties``, ``config``) and saves and loads through the same weights-only ``model.pt``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .predictor import TensorPredictor

__all__ = ["TensorEnsemble"]


class TensorEnsemble(nn.Module):
    """Mean of ``members`` (``TensorPredictor``) over every output key they share.

    Members may differ in architecture but must predict the same properties with the same parts;
    the first member's heads and output maps stand for the ensemble's (``outputs[p].dim``,
    ``.parts``).  Not meant for training: train the members, then combine them.
    """

    def __init__(self, members: Sequence[TensorPredictor]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 1:
            raise ValueError("TensorEnsemble needs at least one member")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if sorted(m.properties) != sorted(first.properties):
                raise ValueError(f"TensorEnsemble: member {k} predicts {m.properties}, member 0 {first.properties}")
            for p in first.properties:
                if m.outputs[p].parts != first.outputs[p].parts:
                    raise ValueError(f"TensorEnsemble: member {k} has parts {m.outputs[p].parts} of {p!r}, "
                                     f"member 0 {first.outputs[p].parts}")
        self.members = nn.ModuleList(members)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TensorEnsemble":
        """Build from ``{"ensemble": [member config, ...]}``."""
        return cls([TensorPredictor.from_config(c) for c in config["ensemble"]])

    @property
    def config(self) -> dict[str, Any]:
        return {"ensemble": [m.config for m in self.members]}

    @property
    def heads(self) -> nn.ModuleDict:
        return self.members[0].heads

    @property
    def outputs(self) -> nn.ModuleDict:
        return self.members[0].outputs

    @property
    def properties(self) -> list[str]:
        return self.members[0].properties

    @property
    def trunk(self) -> nn.Module:
        """The first member's trunk (its ``cutoff`` is the graphs')."""
        return self.members[0].trunk

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Mean physical irreps ``{key: (num_graphs, dim)}`` over the members."""
        outs = [m(batch) for m in self.members]
        return {k: torch.stack([o[k] for o in outs]).mean(dim=0) for k in outs[0]}
