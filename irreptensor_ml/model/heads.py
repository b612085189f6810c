"""Equivariant read-out heads: per-atom features -> one crystal tensor in irreps form.

A :class:`TensorHead` applies, atom by atom, an e3nn :class:`~e3nn.o3.Linear` into a gated hidden
representation, an :class:`e3nn.nn.Gate`, and a second Linear into the property's irreps (e.g.
``"2x0e+2x2e+1x4e"`` for the elastic tensor), then averages over the atoms of each crystal.
Averaging makes the prediction intensive (independent of the supercell size) and invariant to
the order of atoms; every step is equivariant, so the pooled output transforms with
``Irreps(irreps_out).D_from_matrix(R)`` when the crystal is rotated (or reflected) by ``R``.

A linear head can only output irreps its node features carry.  Pretrained potentials have
low-``l`` features (SevenNet-0: ``l <= 2``), but the elastic tensor needs ``4e`` and the
piezoelectric tensor ``3o``: :class:`TensorProductHead` builds them atom by atom from the
quadratic invariants of the features.  With ``y = Linear(x)`` a few channels of every irrep of
``x``,

    h = Linear(x) + TensorSquare(y)        (x batch-normalised; e3nn :class:`~e3nn.o3.TensorSquare`, all paths
                                            ``y (x) y -> h``, learned weights)
    out = mean over the crystal's atoms of Linear(Gate(h))

so ``2e (x) 2e -> 4e`` and ``1o (x) 2e -> 3o`` (or ``2o (x) 2e``) are available.  Both heads have
the forward signature ``head(node_features, batch, num_graphs)``, so they work on any trunk's
features and on cached features (:mod:`irreptensor_ml.foundation.cache`).  :func:`build_head`
selects one by the ``type`` of a head config (:data:`HEAD_TYPES`).
"""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3
from e3nn.nn import BatchNorm, Gate
from torch import nn

__all__ = ["HEAD_TYPES", "TensorHead", "TensorProductHead", "build_head", "default_head_hidden", "mean_pool",
           "square_reachable"]


def mean_pool(x: torch.Tensor, index: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Mean of the rows of ``x`` (N, d) grouped by ``index`` (N,) in ``[0, num_graphs)`` -> (B, d).

    Graphs without atoms get zeros.  Uses :meth:`torch.Tensor.index_add` only.
    """
    if index.shape[0] != x.shape[0]:
        raise ValueError(
            f"mean_pool: index has {index.shape[0]} entries but x has {x.shape[0]} rows"
        )
    total = torch.zeros((num_graphs, x.shape[1]), dtype=x.dtype, device=x.device)
    total = total.index_add(0, index, x)
    count = torch.zeros(num_graphs, dtype=x.dtype, device=x.device)
    count = count.index_add(0, index, torch.ones_like(index, dtype=x.dtype))
    return total / count.clamp(min=1.0)[:, None]


def default_head_hidden(irreps_out: o3.Irreps, scalar_mul: int = 16, mul_per_irrep: int = 8) -> o3.Irreps:
    """Hidden irreps of a head: ``scalar_mul x 0e`` plus ``mul_per_irrep`` copies of every other
    irrep type in ``irreps_out``."""
    types = sorted({ir for _, ir in o3.Irreps(irreps_out) if ir != o3.Irrep("0e")})
    return o3.Irreps(f"{scalar_mul}x0e") + o3.Irreps([(mul_per_irrep, ir) for ir in types])


def _head_irreps(owner: str, irreps_in: Any, irreps_out: Any, irreps_hidden: Any) -> tuple[o3.Irreps, o3.Irreps, o3.Irreps]:
    """Parsed ``(irreps_in, irreps_out, hidden)`` of a head (hidden defaults to
    :func:`default_head_hidden`); ``ValueError`` naming ``owner`` and the inputs if one does not parse."""
    try:
        ins, out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        hidden = default_head_hidden(out) if irreps_hidden is None else o3.Irreps(irreps_hidden)
        return ins, out, hidden.sort().irreps.simplify()
    except (ValueError, AssertionError) as exc:
        raise ValueError(
            f"{owner}: bad irreps (irreps_in={irreps_in!r}, irreps_out={irreps_out!r}, "
            f"irreps_hidden={irreps_hidden!r})"
        ) from exc


def _hidden_gate(hidden: o3.Irreps) -> Gate:
    """Gate over ``hidden``: SiLU/tanh on even/odd scalars, sigmoid-gated higher irreps."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in hidden if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in hidden if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] if gated.num_irreps else [], gated)


class TensorHead(nn.Module):
    """Gated equivariant MLP on atoms followed by mean pooling over each crystal (head type
    ``"linear"``).

    Args:
        irreps_in: irreps of the node features (the trunk's ``irreps_out``).
        irreps_out: irreps of the property, e.g. ``"1x0e+1x2e"``.
        irreps_hidden: hidden irreps; default :func:`default_head_hidden` of ``irreps_out``.

    ``forward(node_features (N, irreps_in.dim), batch (N,) long graph index, num_graphs)
    -> (num_graphs, irreps_out.dim)``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        irreps_hidden: o3.Irreps | str | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out, hidden = _head_irreps("TensorHead", irreps_in, irreps_out, irreps_hidden)
        available = {ir for _, ir in self.irreps_in}
        for name, irreps in (("irreps_out", self.irreps_out), ("irreps_hidden", hidden)):
            missing = sorted({str(ir) for _, ir in irreps if ir not in available})
            if missing:
                raise ValueError(
                    f"TensorHead: {name} needs irreps {missing} that the node features "
                    f"irreps_in={self.irreps_in} do not carry"
                )
        self.irreps_hidden = hidden

        self.gate = _hidden_gate(hidden)
        self.linear_in = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.linear_out = o3.Linear(self.gate.irreps_out, self.irreps_out, biases=True)

    def forward(self, node_features: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if node_features.shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"TensorHead: node_features have {node_features.shape[-1]} channels, "
                f"expected irreps_in.dim={self.irreps_in.dim}"
            )
        h = self.linear_out(self.gate(self.linear_in(node_features)))
        return mean_pool(h, batch, num_graphs)


#: head ``type`` names of a head config -> class (``"linear"`` is the default).
HEAD_TYPES: dict[str, type[nn.Module]] = {}


def build_head(irreps_in: o3.Irreps | str, irreps_out: o3.Irreps | str, type: str = "linear",
               **kwargs: Any) -> nn.Module:
    """The head of ``type`` (a key of :data:`HEAD_TYPES`) with its keyword arguments."""
    if type not in HEAD_TYPES:
        raise ValueError(f"unknown head type {type!r}; expected one of {sorted(HEAD_TYPES)}")
    return HEAD_TYPES[type](irreps_in, irreps_out, **kwargs)


def square_reachable(irreps: o3.Irreps | str) -> set[o3.Irrep]:
    """Irreps present in ``irreps`` or in the product of two of its irreps."""
    types = {ir for _, ir in o3.Irreps(irreps)}
    return types | {ir for a in types for b in types for ir in a * b}


class TensorProductHead(nn.Module):
    """Per-atom linear + tensor-square features, gated MLP, mean pooling over each crystal.

    Args:
        irreps_in: irreps of the node features (the trunk's ``irreps_out``).
        irreps_out: irreps of the property, e.g. ``"2x0e+2x2e+1x4e"``.
        irreps_hidden: hidden irreps; default
            :func:`~irreptensor_ml.model.heads.default_head_hidden` of ``irreps_out``.
        mul_square: channels per irrep type of ``irreps_in`` entering the tensor square
            (its cost grows as ``mul_square**2``).
        input_norm: normalise the node features first with an equivariant batch norm
            (:class:`e3nn.nn.BatchNorm`: per channel, scalars centred, every irrep scaled by its
            mean squared norm, learned affine).  Pretrained features are far from unit scale
            (SevenNet-0's reach norms of ~100), and the square would raise that to ~10^4.

    ``forward(node_features (N, irreps_in.dim), batch (N,) long graph index, num_graphs)
    -> (num_graphs, irreps_out.dim)``.  :attr:`config` is the plain-dict constructor arguments
    (without ``irreps_in``) with ``"type": "tensor_product"`` (see :func:`build_head`).  ``ValueError`` when ``irreps_out`` or the hidden irreps cannot be
    reached from ``irreps_in`` by one product.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        irreps_hidden: o3.Irreps | str | None = None,
        mul_square: int = 8,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out, hidden = _head_irreps(
            "TensorProductHead", irreps_in, irreps_out, irreps_hidden)
        if int(mul_square) < 1:
            raise ValueError(f"TensorProductHead: mul_square must be >= 1, got {mul_square}")
        reachable = square_reachable(self.irreps_in)
        for name, irreps in (("irreps_out", self.irreps_out), ("irreps_hidden", hidden)):
            missing = sorted({str(ir) for _, ir in irreps if ir not in reachable})
            if missing:
                raise ValueError(
                    f"TensorProductHead: {name} needs irreps {missing} that neither the node "
                    f"features irreps_in={self.irreps_in} nor their pairwise products carry"
                )
        hidden_types = {ir for _, ir in hidden}
        missing = sorted({str(ir) for _, ir in self.irreps_out if ir not in hidden_types})
        if missing:
            raise ValueError(f"TensorProductHead: irreps_hidden={hidden} lacks output irreps {missing}")
        self.irreps_hidden = hidden
        self.mul_square = int(mul_square)
        self.config: dict[str, Any] = {
            "type": "tensor_product",
            "irreps_out": str(self.irreps_out),
            "irreps_hidden": str(hidden),
            "mul_square": self.mul_square,
            "input_norm": bool(input_norm),
        }

        self.gate = _hidden_gate(hidden)
        irreps_square = o3.Irreps([(self.mul_square, ir) for ir in sorted({ir for _, ir in self.irreps_in})])
        self.norm = BatchNorm(self.irreps_in) if input_norm else nn.Identity()
        self.linear_in = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.linear_square = o3.Linear(self.irreps_in, irreps_square)
        self.square = o3.TensorSquare(irreps_square, self.gate.irreps_in)
        self.linear_out = o3.Linear(self.gate.irreps_out, self.irreps_out, biases=True)

    def node_outputs(self, node_features: torch.Tensor) -> torch.Tensor:
        """Per-atom outputs before pooling, (N, irreps_out.dim)."""
        if node_features.shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"TensorProductHead: node_features have {node_features.shape[-1]} channels, "
                f"expected irreps_in.dim={self.irreps_in.dim}"
            )
        x = self.norm(node_features)
        h = self.linear_in(x) + self.square(self.linear_square(x))
        return self.linear_out(self.gate(h))

    def forward(self, node_features: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        return mean_pool(self.node_outputs(node_features), batch, num_graphs)

    # e3nn compiles the tensor square into a torch.fx GraphModule and copies or pickles it
    # (``copy.deepcopy``, ``torch.save`` of the module) as its generated code, which torch.fx
    # traces again when it is loaded.  That trace stores every intermediate tensor it computes
    # from buffers alone (index slices, scaled Clebsch-Gordan blocks) as a new *persistent*
    # buffer ``_tensor_constantN`` of the copy's GraphModule, so the copy's state_dict has keys
    # the original lacks (a model.pt saved from it does not load into a freshly built model).
    # Those buffers are derived constants, not state: the copy keeps them out of its state_dict.
    _STATE_KEYS = "_irreptensor_state_dict_keys"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state[self._STATE_KEYS] = list(self.state_dict(keep_vars=True))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        keys = state.pop(self._STATE_KEYS, None)
        super().__setstate__(state)
        if keys is None:
            return
        keep = set(keys)
        for prefix, module in self.named_modules():
            for name, buf in list(module._buffers.items()):
                full = f"{prefix}.{name}" if prefix else name
                if buf is not None and full not in keep and name not in module._non_persistent_buffers_set:
                    module.register_buffer(name, buf, persistent=False)


HEAD_TYPES.update({"linear": TensorHead, "tensor_product": TensorProductHead})
