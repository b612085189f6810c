"""Import ``irreptensor_ml`` on machines without pymatgen (e.g. a bare GPU node).

The data modules of :mod:`irreptensor_ml.data` import pymatgen at module level (``Structure``,
``StructureMatcher``, ``SpacegroupAnalyzer``), and :mod:`irreptensor_ml.train` imports the data
module, so without pymatgen even ``irreptensor_ml.data.batch.collate`` or
``irreptensor_ml.train.module.TensorLightningModule`` cannot be imported. A transfer study that
starts from an exported cache (``--from-cache``) never touches a structure, so it only needs those
imports to *succeed*.

:func:`install_pymatgen_stub_if_missing` does exactly that and nothing more: if (and only if)
pymatgen is not installed, it registers placeholder modules ``pymatgen``, ``pymatgen.core`` ...
in :data:`sys.modules` whose classes raise :class:`ImportError` as soon as they are used. On a
machine with pymatgen it does nothing. The proper fix is lazy pymatgen imports in the data
modules (requested from their owners); this shim can then be deleted.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

__all__ = ["install_pymatgen_stub_if_missing", "pymatgen_is_stub"]

_STUB_FLAG = "__irreptensor_stub__"
_MESSAGE = (
    "pymatgen is not installed: {name} cannot be used. irreptensor_ml runs without pymatgen only "
    "from a preprocessed cache (irreptensor-ml transfer --from-cache FILE); install pymatgen to "
    "read structures"
)

#: module name -> placeholder class names it must provide
_STUBS: dict[str, tuple[str, ...]] = {
    "pymatgen": (),
    "pymatgen.core": ("Structure", "Lattice", "Composition", "Element"),
    "pymatgen.core.tensors": ("Tensor",),
    "pymatgen.analysis": (),
    "pymatgen.analysis.structure_matcher": ("StructureMatcher",),
    "pymatgen.analysis.elasticity": ("ElasticTensor",),
    "pymatgen.symmetry": (),
    "pymatgen.symmetry.analyzer": ("SpacegroupAnalyzer",),
}


class _MissingMeta(type):
    def __getattr__(cls, attr: str) -> Any:  # class attributes, e.g. Structure.from_dict
        raise ImportError(_MESSAGE.format(name=f"{cls.__qualname__}.{attr}"))


def _placeholder(name: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ImportError(_MESSAGE.format(name=name))

    return _MissingMeta(name, (), {"__init__": __init__, "__module__": "pymatgen (missing)"})


def pymatgen_is_stub() -> bool:
    """True if the imported ``pymatgen`` is this module's placeholder."""
    mod = sys.modules.get("pymatgen")
    return bool(mod is not None and getattr(mod, _STUB_FLAG, False))


def install_pymatgen_stub_if_missing() -> bool:
    """Register placeholder pymatgen modules if pymatgen is not installed.

    Returns ``True`` if placeholders are (now) in place, ``False`` if the real pymatgen is
    available (then nothing is changed).
    """
    if pymatgen_is_stub():
        return True
    if "pymatgen" in sys.modules:
        return False
    try:
        if importlib.util.find_spec("pymatgen") is not None:
            return False
    except (ImportError, ValueError):  # a blocking import hook, or a broken installation
        pass
    for name, classes in _STUBS.items():
        mod = types.ModuleType(name, "placeholder: pymatgen is not installed")
        setattr(mod, _STUB_FLAG, True)
        mod.__path__ = []  # type: ignore[attr-defined]  # behave as a package
        for cls in classes:
            setattr(mod, cls, _placeholder(cls))
        sys.modules[name] = mod
    for name in _STUBS:  # parent.child attributes, so "import pymatgen.core as x" works
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    return True
