"""A trunk made of a pretrained universal interatomic potential: SevenNet's equivariant layers.

:class:`FoundationTrunk` runs SevenNet's edge embedding, species embedding and the first
interaction blocks (not its energy read-out) on our crystal graphs and returns per-atom features
with the interface of :class:`~irreptensor_ml.model.trunk.EquivariantTrunk`:
``forward(batch) -> (N, irreps_out.dim)``, :attr:`irreps_out`, a plain-dict :attr:`config`
(its constructor arguments, so ``FoundationTrunk(**trunk.config)`` rebuilds it).

Which features: the output of interaction block ``layer`` (default: the last block whose
output has ``l > 0``; block 3 of SevenNet-0, ``128x0e+64x1e+32x2e``), concatenated with the
scalar (``0e``) channels of the blocks in ``scalar_layers`` (default: the blocks after
``layer``; for SevenNet-0 block 4, whose ``128x0e`` feed its energy read-out).

Parity.  SevenNet-0 is only SO(3)-equivariant (``is_parity = False``): under inversion its
"``1e``" channels are mixtures of vectors and pseudovectors.  Our heads predict tensors of
definite parity (the piezoelectric tensor is odd, and must vanish in centrosymmetric crystals),
so by default (``parity="symmetrize"``) the trunk evaluates the network on the crystal and on
its inversion image (edge vectors ``r -> -r``) and returns, for every SO(3) channel ``f`` of
degree ``l``,

    f_even = (f(S) + f(-S)) / 2    labelled  l e,
    f_odd  = (f(S) - f(-S)) / 2    labelled  l o.

As ``f(-R S) = f(R (-S)) = D^l(R) f(-S)`` for a proper rotation ``R``, both parts are
SO(3)-equivariant, and inversion swaps the two evaluations, fixing ``f_even`` and negating
``f_odd``: the features transform exactly with ``irreps_out.D_from_matrix`` under proper and
improper rotations, at twice the work of one pass (run as one pass over a doubled graph).
``parity="native"`` returns one pass with sevenn's own labels (exact for proper rotations only,
unless the checkpoint has parity).

Only relative vectors enter, so the features are invariant to translations.  Edges not
shorter than the model's cutoff (5 Angstrom for SevenNet-0) are dropped, so graphs built with
any cutoff ``>=`` that give SevenNet's own neighbourhoods.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from e3nn import o3
from torch import nn

from irreptensor_ml.data.batch import edge_vectors

from .sevennet import load_sevennet

__all__ = ["PARITY_MODES", "FoundationTrunk"]

#: Accepted values of ``FoundationTrunk(parity=...)``.
PARITY_MODES = ("symmetrize", "native")

# sevenn's data keys (sevenn._keys); fixed strings of its AtomGraphData format.
_X, _NODE_ATTR, _EDGE_INDEX, _EDGE_VEC, _BATCH = "x", "node_attr", "edge_index", "edge_vec", "batch"
_MAX_Z = 118


def _relabel(irreps: o3.Irreps, parity: int) -> o3.Irreps:
    return o3.Irreps([(mul, (ir.l, parity)) for mul, ir in irreps])


def _scalars(irreps: o3.Irreps) -> tuple[o3.Irreps, list[int]]:
    """The ``l = 0`` part of ``irreps`` and the column indices it occupies."""
    parts, columns = [], []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if ir.l == 0:
            parts.append((mul, ir))
            columns.extend(range(sl.start, sl.stop))
    return o3.Irreps(parts), columns


def _sorting_columns(irreps: o3.Irreps) -> tuple[o3.Irreps, list[int]]:
    """Sorted, simplified irreps and the column order that puts features of ``irreps`` in it
    (stable: equal irreps keep their order)."""
    blocks = list(zip(irreps, irreps.slices()))
    order = sorted(range(len(blocks)), key=lambda k: blocks[k][0][1])
    columns = [c for k in order for c in range(blocks[k][1].start, blocks[k][1].stop)]
    return o3.Irreps([blocks[k][0] for k in order]).simplify(), columns


class FoundationTrunk(nn.Module):
    """SevenNet's pretrained embedding and interaction blocks as a trunk of per-atom features.

    Args:
        foundation: pretrained SevenNet model, a name of
            :data:`~irreptensor_ml.foundation.sevennet.SHIPPED_MODELS` (default ``"7net-0"``)
            or a checkpoint path.
        layer: interaction block (0-based; negative counts from the end) whose full output is
            returned; default: the last block with ``l > 0`` channels (3 for SevenNet-0).
        scalar_layers: blocks whose scalar channels are appended; default: the blocks after
            ``layer``; ``[]`` for none.
        parity: ``"symmetrize"`` (default; exact O(3) features of both parities, two passes) or
            ``"native"`` (one pass, sevenn's labels).
        trainable: whether the pretrained parameters receive gradients (fine-tuning); the
            parameters sevenn itself keeps fixed (the convolution denominators) stay fixed.

    ``forward(batch)`` reads ``batch.species`` (N,) atomic numbers, ``batch.pos`` (N, 3),
    ``batch.edge_index`` (2, E), ``batch.edge_shift`` (E, 3) (Angstrom) and ``batch.batch``
    and returns (N, ``irreps_out.dim``) features, in the dtype of the trunk's parameters (the
    default dtype when it was built).  SevenNet-0 with the defaults: ``irreps_out`` =
    ``256x0o+256x0e+64x1o+64x1e+32x2o+32x2e`` (dim 1216).

    Raises ``ImportError`` naming ``pip install "irreptensor[foundation]"`` without sevenn;
    ``ValueError`` for bad options and, in ``forward``, for elements the potential does not know.
    """

    def __init__(
        self,
        foundation: str = "7net-0",
        layer: int | None = None,
        scalar_layers: Sequence[int] | None = None,
        parity: str = "symmetrize",
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if parity not in PARITY_MODES:
            raise ValueError(f"FoundationTrunk: parity must be one of {PARITY_MODES}, got {parity!r}")
        pretrained = load_sevennet(foundation, torch.get_default_dtype())
        if parity == "symmetrize" and pretrained.is_parity:
            raise ValueError(
                f"FoundationTrunk: {foundation!r} is already O(3)-equivariant; use parity='native'"
            )
        num_blocks = pretrained.num_blocks
        layer = self._block_index(
            max(t for t, irreps in enumerate(pretrained.block_irreps) if irreps.lmax > 0)
            if layer is None else layer,
            num_blocks,
        )
        if scalar_layers is None:
            scalar_layers = range(layer + 1, num_blocks)
        scalar_layers = [self._block_index(t, num_blocks) for t in scalar_layers]
        if layer in scalar_layers or len(set(scalar_layers)) != len(scalar_layers):
            raise ValueError(
                f"FoundationTrunk: scalar_layers={scalar_layers} must be distinct blocks other "
                f"than layer={layer}"
            )
        self.config: dict[str, Any] = {
            "foundation": str(foundation),
            "layer": layer,
            "scalar_layers": scalar_layers,
            "parity": parity,
            "trainable": bool(trainable),
        }
        self.cutoff = pretrained.cutoff
        self.layer = layer
        self.scalar_layers = scalar_layers
        self.parity = parity
        self.num_blocks_run = max([layer, *scalar_layers]) + 1

        # sevenn's modules in its order, up to the last block we read; "onehot_idx_to_onehot"
        # is replaced by our own one-hot (sevenn's casts to float32).
        all_names = list(pretrained.model._modules)
        first_block = next(i for i, name in enumerate(all_names) if name.startswith("0_"))
        run = tuple(f"{t}_" for t in range(self.num_blocks_run))
        names = [n for n in all_names[:first_block] if n != "onehot_idx_to_onehot"]
        names += [n for n in all_names[first_block:] if n.startswith(run)]
        self.sevennet = nn.ModuleDict({name: pretrained.model._modules[name] for name in names})
        self._block_of = {name: int(name.split("_")[0]) for name in names if name.startswith(run)}
        self._fixed = {name for name, p in self.sevennet.named_parameters() if not p.requires_grad}
        self.set_trainable(trainable)

        self.num_types = len(pretrained.type_map)
        z_to_type = torch.full((_MAX_Z + 1,), -1, dtype=torch.long)
        for z, index in pretrained.type_map.items():
            z_to_type[z] = index
        self.register_buffer("_z_to_type", z_to_type, persistent=False)

        base = pretrained.block_irreps[layer]
        self._scalar_columns: list[list[int]] = []
        for t in scalar_layers:
            irreps, columns = _scalars(pretrained.block_irreps[t])
            base = base + irreps
            self._scalar_columns.append(columns)
        if parity == "symmetrize":
            irreps = _relabel(base, 1) + _relabel(base, -1)
        else:
            irreps = base
        self.irreps_out, columns = _sorting_columns(irreps)
        self.register_buffer("_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        # sevenn hands its model over in eval mode; a new module starts in training mode (the
        # blocks used here compute the same in both, but Lightning warns about eval-mode modules
        # when fine-tuning starts).
        self.train()

    @staticmethod
    def _block_index(t: int, num_blocks: int) -> int:
        if not -num_blocks <= int(t) < num_blocks:
            raise ValueError(f"FoundationTrunk: block {t} out of range for {num_blocks} blocks")
        return int(t) % num_blocks

    @property
    def supported_atomic_numbers(self) -> list[int]:
        """Atomic numbers the pretrained potential knows (89 for SevenNet-0)."""
        return torch.nonzero(self._z_to_type >= 0).flatten().tolist()

    def set_trainable(self, trainable: bool = True) -> None:
        """Let the pretrained parameters receive gradients (``True``) or freeze them; parameters
        sevenn keeps fixed stay fixed.  ``config["trainable"]`` follows, so a saved model rebuilds
        in the same state."""
        self.config["trainable"] = bool(trainable)
        for name, p in self.sevennet.named_parameters():
            p.requires_grad_(bool(trainable) and name not in self._fixed)

    def _types(self, species: torch.Tensor) -> torch.Tensor:
        """sevenn type indices of atomic numbers (N,); ``ValueError`` naming unknown elements."""
        if species.numel() and (int(species.min()) < 1 or int(species.max()) > _MAX_Z):
            raise ValueError(
                f"FoundationTrunk: atomic numbers must lie in [1, {_MAX_Z}], got range "
                f"[{int(species.min())}, {int(species.max())}]"
            )
        types = self._z_to_type[species]
        if (types < 0).any():
            from pymatgen.core.periodic_table import Element

            unknown = sorted({int(z) for z in species[types < 0]})
            raise ValueError(
                f"FoundationTrunk: {self.config['foundation']} was not trained on "
                f"{[Element.from_Z(z).symbol for z in unknown]} (atomic numbers {unknown})"
            )
        return types

    def _pass(
        self, onehot: torch.Tensor, edge_index: torch.Tensor, vec: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        """One evaluation of the pretrained layers: block ``layer``'s output with the
        ``scalar_layers`` scalars appended (sevenn's labels), (N, dim)."""
        data = {_X: onehot, _NODE_ATTR: onehot, _EDGE_INDEX: edge_index, _EDGE_VEC: vec, _BATCH: batch}
        outputs: dict[int, torch.Tensor] = {}
        for name, module in self.sevennet.items():
            data = module(data)
            block = self._block_of.get(name)
            if block is not None:
                outputs[block] = data[_X]  # the last module of a block writes its output
        parts = [outputs[self.layer]]
        parts += [outputs[t][:, cols] for t, cols in zip(self.scalar_layers, self._scalar_columns)]
        return torch.cat(parts, dim=1)

    def forward(self, batch: Any) -> torch.Tensor:
        param = next(self.sevennet.parameters())
        types = self._types(batch.species)
        vec = edge_vectors(batch).to(param.dtype)
        edge_index = batch.edge_index
        inside = vec.norm(dim=-1) < self.cutoff
        if not bool(inside.all()):
            edge_index, vec = edge_index[:, inside], vec[inside]
        onehot = torch.nn.functional.one_hot(types, self.num_types).to(param.dtype)
        if self.parity == "native":
            return self._pass(onehot, edge_index, vec, batch.batch).index_select(1, self._columns)
        # One pass over the crystals and their inversion images as one disconnected graph
        # (~1.5x faster on CPU than two passes over the small graphs).
        n = onehot.shape[0]
        both = self._pass(
            torch.cat([onehot, onehot]),
            torch.cat([edge_index, edge_index + n], dim=1),
            torch.cat([vec, -vec]),
            torch.cat([batch.batch, batch.batch]),
        )
        x, mirrored = both[:n], both[n:]
        return torch.cat([(x + mirrored) / 2, (x - mirrored) / 2], dim=1).index_select(1, self._columns)
