"""pymatgen interoperability: tensors in and out.

pymatgen's ``Tensor`` (and ``ElasticTensor``, ``ComplianceTensor``, ``PiezoTensor``) are ``numpy.ndarray``
subclasses holding the **full Cartesian** tensor, so every irreptensor function accepts them directly as
arrays (``np.asarray`` drops the subclass). This module adds the other direction and kind inference:

* :func:`from_pymatgen` -- a pymatgen tensor -> ``(float64 Cartesian array, kind name)``;
* :func:`to_pymatgen` -- a Cartesian or Voigt array of a named kind -> the matching pymatgen class
  (a list of them for a batch).

Conventions agree: pymatgen's Voigt order is xx, yy, zz, yz, xz, xy, its ``ElasticTensor.voigt`` has no
factors (our ``elastic``), ``ComplianceTensor.voigt`` carries 2 and 4 (our ``compliance``), and
``PiezoTensor.voigt`` is the stress-charge ``e_iJ`` without factors (our ``piezoelectric``). pymatgen is
imported only inside these functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kinds import KIND_REQUIRED, TensorKind, get_kind, required_kind

__all__ = ["from_pymatgen", "to_pymatgen", "is_pymatgen_tensor"]

_CLASS_KIND = {"ElasticTensor": "elastic", "ComplianceTensor": "compliance", "PiezoTensor": "piezoelectric"}
_RANK_KIND = {2: "dielectric", 3: "piezoelectric", 4: "elastic"}


def is_pymatgen_tensor(obj: Any) -> bool:
    """True for an instance of ``pymatgen.core.tensors.Tensor`` (or a subclass); never imports pymatgen."""
    return any(c.__module__.startswith("pymatgen") and c.__name__ == "Tensor" for c in type(obj).__mro__)


def from_pymatgen(obj: Any) -> tuple[np.ndarray, str]:
    """A pymatgen tensor as ``(Cartesian float64 array of shape (3,)*rank, kind)``, units unchanged.

    The kind comes from the class (``ElasticTensor`` -> ``"elastic"``, ``ComplianceTensor`` ->
    ``"compliance"``, ``PiezoTensor`` -> ``"piezoelectric"``) or, for a plain ``Tensor``, from its rank
    (2 -> ``"dielectric"``, 3 -> ``"piezoelectric"``, 4 -> ``"elastic"``).

    Raises:
        ValueError: ``obj`` is not a pymatgen tensor, or has a rank without a named kind.
    """
    if not is_pymatgen_tensor(obj):
        raise ValueError(f"expected a pymatgen Tensor (ElasticTensor, PiezoTensor, ...), got {type(obj).__name__}")
    arr = np.array(obj, dtype=np.float64)
    for cls in type(obj).__mro__:
        if cls.__name__ in _CLASS_KIND:
            return arr, _CLASS_KIND[cls.__name__]
    if arr.ndim not in _RANK_KIND or arr.shape != (3,) * arr.ndim:
        raise ValueError(f"pymatgen tensor of shape {arr.shape} has no named irreptensor kind (rank 2, 3 or 4)")
    return arr, _RANK_KIND[arr.ndim]


def to_pymatgen(T: Any, kind: str | TensorKind = KIND_REQUIRED):
    """A Cartesian (or Voigt) tensor of a named kind as the matching pymatgen object.

    Args:
        T: ``(..., 3, ..., 3)`` Cartesian or the kind's Voigt form (numpy, torch or pymatgen).
        kind: ``"elastic"`` -> ``ElasticTensor``, ``"compliance"`` -> ``ComplianceTensor``,
            ``"piezoelectric"`` -> ``PiezoTensor``, ``"dielectric"`` -> ``Tensor`` (rank 2),
            ``"piezoelectric_d"`` -> ``Tensor`` (rank 3; pymatgen's ``PiezoTensor`` is the e form). Required;
            leaving it out still means ``"elastic"`` with a DeprecationWarning (removed in the next release).

    Returns:
        one pymatgen tensor, or a list of them (C order) for a batch.

    Raises:
        ValueError: a formula kind, or a shape that is neither the Cartesian nor the Voigt form.
    """
    from .backend import to_numpy64
    from .voigt import as_cartesian

    k = get_kind(required_kind(kind, "to_pymatgen(T, kind)"))
    if k.voigt_shape is None:
        raise ValueError(f"to_pymatgen supports the named kinds only, not the formula {k.formula!r}")
    try:
        from pymatgen.analysis.elasticity import ComplianceTensor, ElasticTensor
        from pymatgen.analysis.piezo import PiezoTensor
        from pymatgen.core.tensors import Tensor
    except ImportError as e:  # pragma: no cover - pymatgen is installed in the test environment
        raise ImportError("to_pymatgen needs pymatgen (pip install pymatgen)") from e
    Tc, batch = as_cartesian(to_numpy64(np.asarray(T) if is_pymatgen_tensor(T) else T), k)
    Tc = np.asarray(to_numpy64(Tc), dtype=np.float64)
    cls = {"elastic": ElasticTensor, "compliance": ComplianceTensor, "piezoelectric": PiezoTensor}.get(k.name, Tensor)
    if not batch:
        return cls(Tc)
    flat = Tc.reshape(-1, *k.cartesian_shape)
    return [cls(t) for t in flat]
