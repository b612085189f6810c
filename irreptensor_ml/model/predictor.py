"""Multi-property tensor predictor: one shared equivariant trunk, one head per property.

The trunk is our :class:`EquivariantTrunk`, or -- when its config has a ``foundation`` key --
the pretrained layers of a universal potential
(:class:`~irreptensor_ml.foundation.trunk.FoundationTrunk`, needs ``pip install
"irreptensor[foundation]"``).  A head is a :class:`TensorHead` or, with ``type:
tensor_product`` in its config, a :class:`TensorProductHead` (reaches ``4e``/``3o`` from
``l <= 2`` features).

Each head ends in an :class:`~irreptensor_ml.model.outputs.OutputMap` that holds the training
normalization (buffers) and the output transform (``linear``, or ``exp`` for positive-definite
dielectric and elastic tensors), so ``forward`` returns irreps vectors in PHYSICAL units
(``irreptensor.compose(x, kind)`` gives the Cartesian tensor) and the model is the one object
that ``predict``, ``evaluate`` and the transfer study use.  Heads can be added or replaced
without touching the trunk, and the trunk can be frozen for transfer learning.

Transfer learning copies a trained trunk into a new predictor with :func:`transfer_trunk` (the one
way to do it: ``irreptensor-ml train`` with ``model.pretrained_trunk`` and the transfer study's
``frozen``/``finetune`` strategies both use it); :func:`trunk_state` takes the trunk weights out
of a predictor or of its state dict.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .heads import build_head
from .outputs import OutputMap
from .trunk import EquivariantTrunk

__all__ = ["TensorPredictor", "build_trunk", "property_irreps", "transfer_trunk", "trunk_state"]


def build_trunk(config: Mapping[str, Any] | None = None) -> nn.Module:
    """The trunk of a plain-dict config: a ``FoundationTrunk`` if it has a ``foundation`` key,
    else an :class:`EquivariantTrunk`.

    A ``cutoff`` in a foundation config is the cutoff of the graphs it will see (training
    configs set ``model.trunk.cutoff`` to ``data.cutoff``); it is checked against the potential's
    own cutoff (graphs must contain every neighbour the potential sees) and not stored.
    Without sevenn a foundation config raises ``ImportError`` naming
    ``pip install "irreptensor[foundation]"``.
    """
    config = dict(config or {})
    if "foundation" not in config:
        return EquivariantTrunk(**config)
    from irreptensor_ml.foundation.trunk import FoundationTrunk

    graph_cutoff = config.pop("cutoff", None)
    trunk = FoundationTrunk(**config)
    if graph_cutoff is not None and float(graph_cutoff) < trunk.cutoff:
        raise ValueError(
            f"foundation trunk {config['foundation']!r} needs graphs with cutoff >= {trunk.cutoff} "
            f"Angstrom, got data cutoff {graph_cutoff}"
        )
    return trunk


def property_irreps(prop: str) -> str:
    """Irreps string of a known property kind (``dielectric``, ``piezoelectric``, ``elastic``)
    from :func:`irreptensor.irreps`."""
    import irreptensor

    return str(irreptensor.irreps(prop))


class TensorPredictor(nn.Module):
    """Shared trunk plus a :class:`~torch.nn.ModuleDict` of heads.

    Args:
        trunk: trunk config (see :func:`build_trunk`: :class:`EquivariantTrunk` keyword
            arguments, or a ``FoundationTrunk``'s with a ``foundation`` key), or a built trunk
            (any module with ``forward(batch)``, ``irreps_out`` and a plain-dict ``config``).
        heads: mapping ``property -> irreps`` string, or ``property -> dict`` of head keyword
            arguments (``irreps_out``; optional ``irreps_hidden``, ``type`` -- ``"linear"``
            (default, :class:`TensorHead`) or ``"tensor_product"``
            (:class:`TensorProductHead`, with optional ``mul_square``); ``output`` -- the
            :class:`~irreptensor_ml.model.outputs.OutputMap` transform, ``"linear"`` (default)
            or ``"exp"``; ``parts`` -- ``True`` to predict the property's additive parts,
            :data:`irreptensor_ml.data.records.PARTS`, whose sum is the property).  An irreps of
            ``None`` is looked up with :func:`property_irreps`.

    ``forward(batch) -> {property: (num_graphs, dim)}`` in physical irreps units, plus
    ``{"<property>_<part>": (num_graphs, dim)}`` for a head with parts;
    :meth:`forward_latent` also returns the heads' normalized latent outputs (for training).
    :attr:`config` is a plain dict from which :meth:`from_config` rebuilds the same architecture.

    Precision note: e3nn computes its Clebsch-Gordan buffers in the default dtype at
    construction.  For float64 work that needs exact (~1e-12) equivariance, build the model while
    ``torch.get_default_dtype()`` is float64 (``load_model(..., dtype=torch.float64)`` does this);
    a float32-built model cast with ``.double()`` is equivariant only to ~1e-8.
    """

    def __init__(
        self,
        trunk: Mapping[str, Any] | nn.Module | None = None,
        heads: Mapping[str, str | Mapping[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk if isinstance(trunk, nn.Module) else build_trunk(trunk)
        self.heads = nn.ModuleDict()
        self.outputs = nn.ModuleDict()
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
        type: str = "linear",
        output: str = "linear",
        parts: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        """Add (or replace) the head of ``prop``; returns the new head.  The trunk is untouched.

        ``type`` and ``kwargs`` select and configure the head (:func:`~.heads.build_head`);
        ``output`` is the transform of its :class:`OutputMap` (identity normalization until
        :meth:`OutputMap.fit` or a ``load_state_dict`` sets it); ``parts`` makes the head
        predict the property's additive parts (one ``irreps_out`` block each) and their sum."""
        from irreptensor_ml.data.records import PARTS

        if not isinstance(prop, str) or not prop or "." in prop:
            raise ValueError(f"add_head: property name must be a non-empty str without '.', got {prop!r}")
        if irreps_out is None:
            irreps_out = property_irreps(prop)
        part_names = PARTS.get(prop, ()) if parts else ()
        if parts and not part_names:
            raise ValueError(f"add_head: property {prop!r} has no parts (known: {sorted(PARTS)})")
        from e3nn import o3

        irreps_out = o3.Irreps(irreps_out)
        head_irreps = o3.Irreps("+".join([str(irreps_out)] * len(part_names))) if part_names else irreps_out
        head = build_head(self.trunk.irreps_out, head_irreps, type, irreps_hidden=irreps_hidden, **kwargs)
        kind = prop if prop in ("dielectric", "piezoelectric", "elastic") else str(irreps_out)
        out_map = OutputMap(kind, irreps_out.dim, output, parts=part_names)
        param = next(self.trunk.parameters(), None)
        if param is not None:
            head = head.to(device=param.device, dtype=param.dtype)
            out_map = out_map.to(device=param.device)
        self.heads[prop] = head
        self.outputs[prop] = out_map
        if type == "linear":  # the original config layout (no "type" key) for linear heads
            self._head_config[prop] = {
                "irreps_out": str(irreps_out),
                "irreps_hidden": str(head.irreps_hidden),
            }
        else:
            self._head_config[prop] = {**dict(head.config), "irreps_out": str(irreps_out)}
        if output != "linear":  # linear maps keep the original layout too
            self._head_config[prop]["output"] = output
        if part_names:
            self._head_config[prop]["parts"] = True
        return head

    def freeze_trunk(self, frozen: bool = True) -> None:
        """Stop (``frozen=True``) or restart gradient updates of the trunk's parameters.

        A trunk with its own ``set_trainable`` (a foundation trunk, whose potential keeps some
        parameters fixed) decides itself which parameters restart."""
        if hasattr(self.trunk, "set_trainable"):
            self.trunk.set_trainable(not frozen)
            return
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)

    def forward_latent(self, batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(latent, physical)``: each head's normalized latent output ``{property: (num_graphs,
        latent_dim)}`` and the physical irreps ``{property: (num_graphs, dim)}`` (with parts: also
        ``{"<property>_<part>": (num_graphs, dim)}``)."""
        features = self.trunk(batch)
        latent = {
            prop: head(features, batch.batch, int(batch.num_graphs))
            for prop, head in self.heads.items()
        }
        physical: dict[str, torch.Tensor] = {}
        for prop, y in latent.items():
            out_map = self.outputs[prop]
            parts = out_map.forward_parts(y)
            physical[prop] = sum(parts.values()) if parts else out_map(y)
            physical.update({f"{prop}_{p}": v for p, v in parts.items()})
        return latent, physical

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Physical irreps ``{property: (num_graphs, dim)}`` (layout ``irreptensor.irreps(kind)``)."""
        return self.forward_latent(batch)[1]


TRUNK_PREFIX = "trunk."


def trunk_state(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk weights of ``source`` as a state dict without the ``trunk.`` prefix (what
    ``predictor.trunk.load_state_dict`` takes).

    ``source`` is a :class:`TensorPredictor` (or any module with a ``trunk``), a trunk module, or
    the state dict of a predictor (its ``trunk.*`` entries, e.g. the ``state_dict`` of a
    ``model.pt``).  ``ValueError`` when a state dict has no ``trunk.*`` entry."""
    if isinstance(source, nn.Module):
        trunk = getattr(source, "trunk", None)
        return dict((trunk if isinstance(trunk, nn.Module) else source).state_dict())
    out = {k[len(TRUNK_PREFIX):]: v for k, v in source.items() if k.startswith(TRUNK_PREFIX)}
    if not out:
        raise ValueError("state dict has no 'trunk.*' entries (not a TensorPredictor state?)")
    return out


def transfer_trunk(
    predictor: nn.Module,
    source: nn.Module | Mapping[str, torch.Tensor],
    *,
    what: str = "pretrained trunk",
) -> None:
    """Copy the trunk weights of ``source`` into ``predictor.trunk`` (the heads are untouched).

    Args:
        predictor: a :class:`TensorPredictor` whose trunk has the source's architecture (build it
            from the source's ``trunk.config``: the settings that are not weights, such as the
            cutoff, are the predictor's).
        source: a trained predictor or trunk module, or a trunk state dict (``trunk.*`` keys
            without the prefix, :func:`trunk_state`).
        what: how the source is named in the error message.

    Raises:
        ValueError: the architectures differ (missing or unexpected weights, other shapes); one
            line naming the first differences.  Nothing is copied then.
    """
    if isinstance(source, nn.Module):
        state = trunk_state(source)
    else:
        state = dict(source)
    own = predictor.trunk.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what} does not match the trunk architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}"
        )
    predictor.trunk.load_state_dict(state, strict=True)
