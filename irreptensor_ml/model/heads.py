"""Equivariant read-out heads: per-atom features -> one crystal tensor in irreps form.

A :class:`TensorHead` applies, atom by atom, an e3nn :class:`~e3nn.o3.Linear` into a gated hidden
representation, an :class:`e3nn.nn.Gate`, and a second Linear into the property's irreps (e.g.
``"2x0e+2x2e+1x4e"`` for the elastic tensor), then averages over the atoms of each crystal.
Averaging makes the prediction intensive (independent of the supercell size) and invariant to
the order of atoms; every step is equivariant, so the pooled output transforms with
``Irreps(irreps_out).D_from_matrix(R)`` when the crystal is rotated (or reflected) by ``R``.
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

__all__ = ["TensorHead", "default_head_hidden", "mean_pool"]


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


class TensorHead(nn.Module):
    """Gated equivariant MLP on atoms followed by mean pooling over each crystal.

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
        try:
            self.irreps_in = o3.Irreps(irreps_in)
            self.irreps_out = o3.Irreps(irreps_out)
            hidden = (
                default_head_hidden(self.irreps_out)
                if irreps_hidden is None
                else o3.Irreps(irreps_hidden)
            ).sort().irreps.simplify()
        except (ValueError, AssertionError) as exc:
            raise ValueError(
                f"TensorHead: bad irreps (irreps_in={irreps_in!r}, irreps_out={irreps_out!r}, "
                f"irreps_hidden={irreps_hidden!r})"
            ) from exc
        available = {ir for _, ir in self.irreps_in}
        for name, irreps in (("irreps_out", self.irreps_out), ("irreps_hidden", hidden)):
            missing = sorted({str(ir) for _, ir in irreps if ir not in available})
            if missing:
                raise ValueError(
                    f"TensorHead: {name} needs irreps {missing} that the node features "
                    f"irreps_in={self.irreps_in} do not carry"
                )
        self.irreps_hidden = hidden

        scalars = o3.Irreps([(mul, ir) for mul, ir in hidden if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in hidden if ir.l > 0])
        acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, acts, gates, [torch.sigmoid] if gated.num_irreps else [], gated)
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
