"""Multi-property tensor predictor: one shared equivariant trunk, one head per property.

Predictions are irreps vectors in the NORMALIZED units of
:class:`irreptensor_ml.data.normalization.IrrepNormalizer` (denormalize them, then
``irreptensor.compose(x, kind)`` gives the Cartesian tensor).  Heads can be added or replaced
without touching the trunk, and the trunk can be frozen for transfer learning.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .heads import TensorHead
from .trunk import EquivariantTrunk

__all__ = ["TensorPredictor", "property_irreps"]


def property_irreps(prop: str) -> str:
    """Irreps string of a known property kind (``dielectric``, ``piezoelectric``, ``elastic``)
    from :func:`irreptensor.irreps`."""
    import irreptensor

    return str(irreptensor.irreps(prop))


class TensorPredictor(nn.Module):
    """Shared :class:`EquivariantTrunk` plus a :class:`~torch.nn.ModuleDict` of :class:`TensorHead`.

    Args:
        trunk: trunk keyword arguments (see :class:`EquivariantTrunk`), or a built trunk.
        heads: mapping ``property -> irreps`` string, or ``property -> dict`` of
            :class:`TensorHead` keyword arguments (``irreps_out`` required, ``irreps_hidden``
            optional).  An irreps of ``None`` is looked up with :func:`property_irreps`.

    ``forward(batch) -> {property: (num_graphs, dim)}`` in normalized irreps units.
    :attr:`config` is a plain dict from which :meth:`from_config` rebuilds the same architecture.

    Precision note: e3nn computes its Clebsch-Gordan buffers in the default dtype at
    construction.  For float64 work that needs exact (~1e-12) equivariance, build the model while
    ``torch.get_default_dtype()`` is float64 (``load_model(..., dtype=torch.float64)`` does this);
    a float32-built model cast with ``.double()`` is equivariant only to ~1e-8.
    """

    def __init__(
        self,
        trunk: Mapping[str, Any] | EquivariantTrunk | None = None,
        heads: Mapping[str, str | Mapping[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(trunk, EquivariantTrunk):
            self.trunk = trunk
        else:
            self.trunk = EquivariantTrunk(**dict(trunk or {}))
        self.heads = nn.ModuleDict()
        self._head_config: dict[str, dict[str, Any]] = {}
        for prop, spec in (heads or {}).items():
            if isinstance(spec, Mapping):
                self.add_head(prop, **dict(spec))
            else:
                self.add_head(prop, spec)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TensorPredictor":
        """Build from ``{"trunk": {...}, "heads": {prop: {"irreps_out": ..., ...}}}``."""
        unknown = set(config) - {"trunk", "heads"}
        if unknown:
            raise ValueError(f"TensorPredictor.from_config: unknown keys {sorted(unknown)}")
        return cls(trunk=config.get("trunk"), heads=config.get("heads"))

    @property
    def config(self) -> dict[str, Any]:
        """Plain-dict architecture description (ints, floats, str, lists, dicts only)."""
        return {
            "trunk": dict(self.trunk.config),
            "heads": {p: dict(c) for p, c in self._head_config.items()},
        }

    @property
    def properties(self) -> list[str]:
        return list(self.heads.keys())

    def add_head(
        self,
        prop: str,
        irreps_out: str | None = None,
        irreps_hidden: str | None = None,
    ) -> TensorHead:
        """Add (or replace) the head of ``prop``; returns the new head.  The trunk is untouched."""
        if not isinstance(prop, str) or not prop or "." in prop:
            raise ValueError(f"add_head: property name must be a non-empty str without '.', got {prop!r}")
        if irreps_out is None:
            irreps_out = property_irreps(prop)
        head = TensorHead(self.trunk.irreps_out, irreps_out, irreps_hidden)
        param = next(self.trunk.parameters(), None)
        if param is not None:
            head = head.to(device=param.device, dtype=param.dtype)
        self.heads[prop] = head
        self._head_config[prop] = {
            "irreps_out": str(head.irreps_out),
            "irreps_hidden": str(head.irreps_hidden),
        }
        return head

    def freeze_trunk(self, frozen: bool = True) -> None:
        """Stop (``frozen=True``) or restart gradient updates of the trunk's parameters."""
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        features = self.trunk(batch)
        return {
            prop: head(features, batch.batch, int(batch.num_graphs))
            for prop, head in self.heads.items()
        }
