"""Fixed per-element descriptors: a prior for the species embedding on small data sets.

With ~1,000 training crystals many elements occur in a handful of structures, and a learned
embedding of them is mostly noise; a random forest on electronegativity, period, group, radii and
masses beats such a network on the dielectric tensor.  :func:`element_table` gives every atomic
number a standardized vector of such tabulated properties (pymatgen's ``Element`` data); the trunk
adds a learned linear map of it to the learned embedding (``EquivariantTrunk(element_features=True)``).

The table is stored as a buffer in the model's ``state_dict``, so a saved model carries the values
it was trained with and loads without pymatgen.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

__all__ = ["ELEMENT_PROPERTIES", "element_table"]

#: pymatgen ``Element`` attributes used (then the one-hot ``block``: s, p, d, f).
ELEMENT_PROPERTIES: tuple[str, ...] = (
    "X", "row", "group", "atomic_radius", "atomic_mass", "mendeleev_no", "average_ionic_radius",
    "ionization_energy", "electron_affinity",
)
_BLOCKS = ("s", "p", "d", "f")

#: number of descriptors per element.
NUM_FEATURES = len(ELEMENT_PROPERTIES) + len(_BLOCKS)


def _value(element: object, name: str) -> float:
    try:
        v = getattr(element, name)
    except Exception:  # pymatgen raises for data it does not tabulate for an element
        return math.nan
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def element_table(num_species: int) -> torch.Tensor:
    """``(num_species, NUM_FEATURES)`` float32 descriptors of atomic numbers ``0 .. num_species-1``:
    each property standardized over the elements that have it (mean 0, std 1), missing values 0;
    row 0 (no element) is 0.  Zeros everywhere when pymatgen is not installed (a saved model's
    buffer then replaces them on load)."""
    table = np.zeros((num_species, NUM_FEATURES))
    try:
        from pymatgen.core import Element
    except ImportError:
        return torch.zeros(num_species, NUM_FEATURES)
    raw = np.full((num_species, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, min(num_species, 119)):
            el = Element.from_Z(z)
            raw[z] = [_value(el, name) for name in ELEMENT_PROPERTIES]
            block = getattr(el, "block", "")
            if block in _BLOCKS:
                table[z, len(ELEMENT_PROPERTIES) + _BLOCKS.index(block)] = 1.0
    mean, std = np.nanmean(raw[1:], axis=0), np.nanstd(raw[1:], axis=0)
    scaled = (raw - mean) / np.where(std > 0, std, 1.0)
    table[:, : len(ELEMENT_PROPERTIES)] = np.nan_to_num(scaled, nan=0.0)
    table[0] = 0.0
    return torch.as_tensor(table, dtype=torch.float32)
