"""E(3)-equivariant message-passing trunk (NequIP-style interaction blocks built from e3nn).

The trunk maps a batch of periodic crystal graphs to per-atom features that carry irreps of
O(3) of both parities up to ``l = 4``.  Every tensor head (dielectric ``0e+2e``, piezoelectric
``2x1o+2o+3o``, elastic ``2x0e+2x2e+4e``) reads from these features.

Architecture (one :class:`InteractionBlock` per layer):

1. species embedding: atomic number -> ``embedding_dim x 0e`` (learned; with ``element_features``
   plus a learned linear map of fixed element descriptors, :mod:`.elements`);
2. per edge ``i <- j`` (``edge_index[0] = i`` is the centre, ``edge_index[1] = j`` the neighbour,
   ``r_ij = pos[j] - pos[i] + shift``): spherical harmonics ``Y^l(r_ij / |r_ij|)``, ``l <= lmax_sh``,
   and a Bessel radial basis with a smooth polynomial cutoff envelope (:mod:`.radial`);
3. message ``m_ij = TP_w(|r_ij|)(x_j, Y(r_ij))``: an e3nn :class:`~e3nn.o3.TensorProduct` with
   ``'uvu'`` instructions whose path weights are produced per edge by a radial MLP
   (:class:`e3nn.nn.FullyConnectedNet`, bias-free, so the weights vanish smoothly at the cutoff);
4. aggregation ``sum_j m_ij / sqrt(avg_num_neighbors)`` with :meth:`torch.Tensor.index_add`
   (no torch_scatter / torch_geometric);
5. linear mixing plus linear self-connection, :class:`e3nn.nn.Gate` nonlinearity
   (SiLU / tanh on even / odd scalars, sigmoid gates on the ``l > 0`` irreps), and a residual
   update ``x <- x + block(x)`` on every irrep block present (same multiplicity) in both the
   block's input and output.  Early blocks output only the irreps of ``irreps_hidden`` that their
   tensor products can reach; from the layer on which all are reachable every block is fully
   residual.

Only relative vectors enter, so the output is invariant to translations and to permutations of
atoms (up to the same permutation of rows) and equivariant under proper and improper rotations
of the whole crystal (positions, lattice and periodic shifts rotated together).
"""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from irreptensor_ml.data.batch import edge_vectors  # noqa: F401  (re-exported by irreptensor_ml.model)

from .radial import RadialBasis

__all__ = ["DEFAULT_HIDDEN_IRREPS", "InteractionBlock", "EquivariantTrunk", "edge_vectors"]

#: default node irreps: both parities for every l <= 4, multiplicity decreasing with l.
DEFAULT_HIDDEN_IRREPS = "32x0e+8x0o+8x1o+8x1e+4x2e+4x2o+2x3o+2x3e+2x4e+2x4o"

_MAX_Z = 100


def _gate_for(irreps_hidden: o3.Irreps) -> Gate:
    """Build the Gate whose output is ``irreps_hidden`` (scalars pass through an activation,
    every ``l > 0`` irrep is multiplied by its own sigmoid-activated ``0e`` gate)."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps > 0 else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] if gated.num_irreps else [], gated)


class InteractionBlock(nn.Module):
    """One gated tensor-product convolution with self-connection and optional residual.

    Args:
        irreps_in: node feature irreps entering the block.
        irreps_out: node feature irreps leaving the block (must contain at least one scalar).
        irreps_sh: irreps of the edge spherical harmonics.
        num_basis: size of the radial embedding fed to the radial MLP.
        radial_hidden: hidden width(s) of the radial MLP.
        avg_num_neighbors: normalisation constant of the neighbour sum.
        message_lmax: only node irreps with ``l <= message_lmax`` enter the edge tensor product
            (``None``: all).  Higher-``l`` outputs are still produced from products of lower-``l``
            neighbour features with the edge harmonics; excluding ``l = 3, 4`` inputs removes the
            most expensive paths (cost ~ (2 l_in + 1)(2 l_sh + 1)(2 l_out + 1) per edge).

    ``forward(x (N, irreps_in.dim), edge_index (2, E), edge_sh (E, irreps_sh.dim),
    edge_radial (E, num_basis)) -> (N, irreps_out.dim)``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_basis: int,
        radial_hidden: list[int],
        avg_num_neighbors: float,
        message_lmax: int | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        # Node irreps that are sent along edges (through the edge tensor product).
        self.irreps_message = o3.Irreps(
            [(mul, ir) for mul, ir in self.irreps_in if message_lmax is None or ir.l <= message_lmax]
        )
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.avg_num_neighbors = float(avg_num_neighbors)

        self.gate = _gate_for(self.irreps_out)
        target = self.gate.irreps_in
        wanted = {ir for _, ir in target}

        # uvu tensor-product paths x_j (x) Y -> every irrep the gate needs.
        mid: list[tuple[int, o3.Irrep]] = []
        instructions = []
        for i, (mul, ir_in) in enumerate(self.irreps_message):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(mid)
        # An output irrep must come from a message path or from the linear self-connection.
        missing = wanted - {ir for _, ir in irreps_mid} - {ir for _, ir in self.irreps_in}
        if missing:
            raise ValueError(
                f"InteractionBlock: irreps {sorted(map(str, missing))} of irreps_out={self.irreps_out} "
                f"cannot be reached from irreps_in={self.irreps_in} (messages from l <= {message_lmax}) "
                f"with edge irreps {self.irreps_sh}; add layers or raise lmax_sh / message_lmax"
            )
        irreps_mid, perm, _ = irreps_mid.sort()
        instructions = [(i, j, perm[k], mode, w) for i, j, k, mode, w in instructions]

        self.linear_pre = o3.Linear(self.irreps_in, self.irreps_message)
        self.tp = o3.TensorProduct(
            self.irreps_message,
            self.irreps_sh,
            irreps_mid,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.radial_mlp = FullyConnectedNet(
            [num_basis, *radial_hidden, self.tp.weight_numel], torch.nn.functional.silu
        )
        self.linear_post = o3.Linear(irreps_mid, target)
        self.self_connection = o3.Linear(self.irreps_in, target)

        # Residual: copy every input irrep block whose (mul, irrep) also occurs in the output.
        in_idx: list[int] = []
        out_idx: list[int] = []
        in_slices = {(mul, ir): sl for (mul, ir), sl in zip(self.irreps_in, self.irreps_in.slices())}
        for (mul, ir), sl_out in zip(self.irreps_out, self.irreps_out.slices()):
            sl_in = in_slices.get((mul, ir))
            if sl_in is not None:
                in_idx.extend(range(sl_in.start, sl_in.stop))
                out_idx.extend(range(sl_out.start, sl_out.stop))
        self.register_buffer("_res_in", torch.tensor(in_idx, dtype=torch.long), persistent=False)
        self.register_buffer("_res_out", torch.tensor(out_idx, dtype=torch.long), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
    ) -> torch.Tensor:
        center, neighbor = edge_index[0], edge_index[1]
        h = self.linear_pre(x)
        weights = self.radial_mlp(edge_radial)
        messages = self.tp(h[neighbor], edge_sh, weights)
        agg = torch.zeros(
            (x.shape[0], messages.shape[1]), dtype=messages.dtype, device=messages.device
        )
        agg = agg.index_add(0, center, messages) / self.avg_num_neighbors**0.5
        out = self.gate(self.linear_post(agg) + self.self_connection(x))
        if self._res_in.numel() == 0:
            return out
        return out.index_add(1, self._res_out, x.index_select(1, self._res_in))


class EquivariantTrunk(nn.Module):
    """Equivariant message-passing network giving per-atom features of both parities up to l=4.

    Args:
        num_species: size of the species embedding table; atomic numbers ``0 .. num_species-1``
            (default 101 covers Z <= 100).
        embedding_dim: multiplicity of the ``0e`` species embedding.
        irreps_hidden: node irreps after every layer (an e3nn irreps string); must contain scalars.
        num_layers: number of interaction blocks (>= 1).
        lmax_sh: maximum degree of the edge spherical harmonics; higher node ``l`` is reached by
            repeated tensor products.
        cutoff: neighbour cutoff in Angstrom (must equal the cutoff the graphs were built with).
        num_basis: number of radial Bessel functions.
        envelope_exponent: exponent of the smooth cutoff envelope.
        radial_hidden: hidden widths of the radial MLP (a list of ints).
        avg_num_neighbors: normalisation of the neighbour sum (typical neighbours per atom at
            ``cutoff``; ~34 for the Materials Project crystals at 5 Angstrom).
        message_lmax: highest ``l`` of the node features sent through the edge tensor product
            (see :class:`InteractionBlock`); ``None`` sends all.  The default 2 makes the tensor
            product of a full ``l <= 4`` layer about three times cheaper (measured, l_sh <= 2).
        element_features: add a learned linear map of fixed, standardized element descriptors
            (:func:`.elements.element_table`, a ``state_dict`` buffer) to the species embedding.

    ``forward(batch)`` reads ``batch.species`` (N,), ``batch.pos`` (N, 3), ``batch.edge_index``
    (2, E) and ``batch.edge_shift`` (E, 3) and returns (N, ``irreps_out.dim``) features;
    :attr:`irreps_out` is ``irreps_hidden``.  :attr:`config` is the plain-dict constructor
    arguments (for weights-only checkpoints).
    """

    def __init__(
        self,
        num_species: int = _MAX_Z + 1,
        embedding_dim: int = 32,
        irreps_hidden: str = DEFAULT_HIDDEN_IRREPS,
        num_layers: int = 3,
        lmax_sh: int = 2,
        cutoff: float = 5.0,
        num_basis: int = 8,
        envelope_exponent: int = 6,
        radial_hidden: list[int] | tuple[int, ...] = (32,),
        avg_num_neighbors: float = 32.0,
        message_lmax: int | None = 2,
        element_features: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"EquivariantTrunk: num_layers must be >= 1, got {num_layers}")
        if lmax_sh < 1:
            raise ValueError(f"EquivariantTrunk: lmax_sh must be >= 1, got {lmax_sh}")
        if embedding_dim < 1:
            raise ValueError(f"EquivariantTrunk: embedding_dim must be >= 1, got {embedding_dim}")
        if not avg_num_neighbors > 0:
            raise ValueError(
                f"EquivariantTrunk: avg_num_neighbors must be > 0, got {avg_num_neighbors}"
            )
        try:
            hidden = o3.Irreps(irreps_hidden).sort().irreps.simplify()
        except (ValueError, AssertionError) as exc:
            raise ValueError(
                f"EquivariantTrunk: irreps_hidden={irreps_hidden!r} is not an e3nn irreps string"
            ) from exc
        if not any(ir.l == 0 for _, ir in hidden):
            raise ValueError(
                f"EquivariantTrunk: irreps_hidden={irreps_hidden!r} needs scalar (0e/0o) channels"
            )
        self.config: dict[str, Any] = {
            "num_species": int(num_species),
            "embedding_dim": int(embedding_dim),
            "irreps_hidden": str(hidden),
            "num_layers": int(num_layers),
            "lmax_sh": int(lmax_sh),
            "cutoff": float(cutoff),
            "num_basis": int(num_basis),
            "envelope_exponent": int(envelope_exponent),
            "radial_hidden": [int(h) for h in radial_hidden],
            "avg_num_neighbors": float(avg_num_neighbors),
            "message_lmax": None if message_lmax is None else int(message_lmax),
        }
        if element_features:  # only when set: configs (and run ids) of earlier models are unchanged
            self.config["element_features"] = True
        self.num_species = int(num_species)
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(self.num_species, embedding_dim)
        self.element_features = bool(element_features)
        if self.element_features:
            from .elements import element_table

            self.register_buffer("element_table", element_table(self.num_species))
            self.element_linear = nn.Linear(self.element_table.shape[1], embedding_dim, bias=False)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial = RadialBasis(cutoff, num_basis, envelope_exponent)

        irreps = o3.Irreps(f"{embedding_dim}x0e")
        blocks = []
        for layer in range(num_layers):
            if layer == num_layers - 1:  # the last block must produce all of ``hidden``
                out = hidden
            else:  # earlier blocks: the part of ``hidden`` reachable from their input
                reachable = {
                    ir_out
                    for _, ir_in in irreps
                    if message_lmax is None or ir_in.l <= message_lmax
                    for _, ir_sh in self.irreps_sh
                    for ir_out in ir_in * ir_sh
                }
                out = o3.Irreps([(mul, ir) for mul, ir in hidden if ir in reachable])
            blocks.append(
                InteractionBlock(
                    irreps,
                    out,
                    self.irreps_sh,
                    num_basis,
                    list(radial_hidden),
                    avg_num_neighbors,
                    message_lmax,
                )
            )
            irreps = out
        self.layers = nn.ModuleList(blocks)
        self.irreps_out: o3.Irreps = hidden

    def forward(self, batch: Any) -> torch.Tensor:
        species = batch.species
        if species.numel() and (int(species.min()) < 0 or int(species.max()) >= self.num_species):
            raise ValueError(
                f"EquivariantTrunk: atomic numbers must lie in [0, {self.num_species - 1}], got "
                f"range [{int(species.min())}, {int(species.max())}]"
            )
        vec = edge_vectors(batch)
        length = vec.norm(dim=-1)
        edge_sh = self.sh(vec)
        edge_radial = self.radial(length)
        x = self.embedding(species).to(vec.dtype)
        if self.element_features:
            x = x + self.element_linear(self.element_table[species].to(self.element_linear.weight.dtype)).to(vec.dtype)
        for layer in self.layers:
            x = layer(x, batch.edge_index, edge_sh, edge_radial)
        return x
