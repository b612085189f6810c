"""irreptensor: exact Cartesian <-> irreducible (spherical-tensor) bases for crystal tensors.

>>> import numpy as np, irreptensor as it
>>> it.irreps("elastic")
'2x0e+2x2e+1x4e'
>>> C = it.from_voigt(np.diag([100.0, 100, 100, 40, 40, 40]), "elastic")
>>> x = it.decompose(C, "elastic")
>>> bool(np.allclose(it.compose(x, "elastic"), C))
True

The bases, layout, real spherical-harmonic basis and the gauge inside repeated irreps are those of
``e3nn.io.CartesianTensor``; conventions are in ``docs/conventions.md``. numpy and sympy only: torch is
imported only when a torch tensor is passed in.
"""

from .basis import IrrepBlock, basis, blocks, dim, irreps
from .crystal_symmetry import point_group_ops, symmetrize, symmetry_residual
from .decomposition import compose, decompose
from .harmonic import DielectricParts, ElasticParts, PiezoelectricParts, harmonic_parts
from .interop import from_pymatgen, to_pymatgen
from .invariants import (
    ElasticModuli,
    block_norms,
    distance_from_isotropy,
    log_euclidean_anisotropy,
    universal_anisotropy,
    vrh_moduli,
)
from .kinds import NAMED_KINDS, TensorKind, get_kind
from .rotation import random_rotation, rotate
from .symmetry_class import ELASTIC_CLASSES, SymmetryClass, symmetry_class
from .voigt import from_mandel, from_voigt, to_mandel, to_voigt
from .wigner import wigner_D

__version__ = "0.1.0"

__all__ = [
    "DielectricParts",
    "ELASTIC_CLASSES",
    "ElasticModuli",
    "ElasticParts",
    "PiezoelectricParts",
    "SymmetryClass",
    "block_norms",
    "distance_from_isotropy",
    "from_pymatgen",
    "harmonic_parts",
    "log_euclidean_anisotropy",
    "point_group_ops",
    "symmetrize",
    "symmetry_class",
    "symmetry_residual",
    "to_pymatgen",
    "universal_anisotropy",
    "vrh_moduli",
    "IrrepBlock",
    "NAMED_KINDS",
    "TensorKind",
    "basis",
    "blocks",
    "compose",
    "decompose",
    "dim",
    "from_mandel",
    "from_voigt",
    "get_kind",
    "irreps",
    "random_rotation",
    "rotate",
    "to_mandel",
    "to_voigt",
    "wigner_D",
]
