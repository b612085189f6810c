"""Equivariant model: :class:`EquivariantTrunk` (message passing), :class:`TensorHead` (one per
property) and :class:`TensorPredictor` (trunk + heads)."""

from .heads import TensorHead, default_head_hidden, mean_pool
from .predictor import TensorPredictor, property_irreps
from .radial import RadialBasis, polynomial_envelope
from .trunk import DEFAULT_HIDDEN_IRREPS, EquivariantTrunk, InteractionBlock, edge_vectors

__all__ = [
    "DEFAULT_HIDDEN_IRREPS",
    "EquivariantTrunk",
    "InteractionBlock",
    "RadialBasis",
    "TensorHead",
    "TensorPredictor",
    "default_head_hidden",
    "edge_vectors",
    "mean_pool",
    "polynomial_envelope",
    "property_irreps",
]
