"""Equivariant model: :class:`EquivariantTrunk` (message passing), :class:`TensorHead` /
:class:`TensorProductHead` (one per property) and :class:`TensorPredictor` (trunk + heads; the
trunk may also be a pretrained foundation trunk, see :func:`build_trunk`); each head ends in an
:class:`OutputMap` (normalization + output transform) so the model returns physical units; :class:`TensorEnsemble` averages trained predictors; :func:`transfer_trunk` copies a trained trunk into a new predictor."""

from .ensemble import TensorEnsemble
from .heads import HEAD_TYPES, TensorHead, TensorProductHead, build_head, default_head_hidden, mean_pool, square_reachable
from .outputs import TRANSFORMS, OutputMap, matrix_form
from .predictor import TensorPredictor, build_trunk, property_irreps, transfer_trunk, trunk_state
from .radial import RadialBasis, polynomial_envelope
from .trunk import DEFAULT_HIDDEN_IRREPS, EquivariantTrunk, InteractionBlock, edge_vectors

__all__ = [
    "DEFAULT_HIDDEN_IRREPS",
    "HEAD_TYPES",
    "EquivariantTrunk",
    "InteractionBlock",
    "OutputMap",
    "RadialBasis",
    "TensorHead",
    "TRANSFORMS",
    "TensorProductHead",
    "build_head",
    "build_trunk",
    "TensorEnsemble",
    "TensorPredictor",
    "default_head_hidden",
    "edge_vectors",
    "matrix_form",
    "mean_pool",
    "polynomial_envelope",
    "property_irreps",
    "square_reachable",
    "transfer_trunk",
    "trunk_state",
]
