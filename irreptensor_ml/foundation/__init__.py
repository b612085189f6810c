"""Foundation trunk: transfer from a universal interatomic potential's pretrained layers.

Modules: :mod:`.sevennet` (offline loading of SevenNet-0 and what it is), :mod:`.trunk`
(:class:`FoundationTrunk`, SevenNet's embedding and interaction blocks with the interface of
:class:`~irreptensor_ml.model.trunk.EquivariantTrunk`), :mod:`.cache`
(per-atom features of a frozen trunk, computed once), :mod:`.finite_strain` (reference elastic
tensors of the potential itself by finite strains).  The head that reaches ``4e`` and ``3o`` from
``l <= 2`` features, :class:`~irreptensor_ml.model.heads.TensorProductHead`, needs no sevenn and
lives in :mod:`irreptensor_ml.model.heads` (re-exported here).  A model config selects the trunk
(``{"trunk": {"foundation": "7net-0", ...}}``, see :class:`~irreptensor_ml.model.TensorPredictor`).

``sevenn`` is optional (``pip install "irreptensor[foundation]"``): this package imports without
it, and building a trunk or a calculator raises an ``ImportError`` that names the extra.
"""

from importlib import import_module

# Lazy exports (PEP 562): importing the package costs nothing and never imports sevenn.
_EXPORTS = {
    "INSTALL_HINT": "sevennet", "SHIPPED_MODELS": "sevennet", "SevenNetModel": "sevennet",
    "load_sevennet": "sevennet", "require_sevenn": "sevennet", "sevenn_available": "sevennet",
    "PARITY_MODES": "trunk", "FoundationTrunk": "trunk",
    "TensorProductHead": "irreptensor_ml.model.heads", "square_reachable": "irreptensor_ml.model.heads",
    "CachedFeatureTrunk": "cache", "NodeFeatures": "cache", "cached_node_features": "cache", "extract_node_features": "cache",
    "load_node_features": "cache", "node_features_key": "cache", "save_node_features": "cache",
    "DEFAULT_STRAINS": "finite_strain", "EV_PER_A3_IN_GPA": "finite_strain",
    "FiniteStrainResult": "finite_strain", "finite_strain_elastic": "finite_strain",
    "finite_strain_elastic_many": "finite_strain", "relax": "finite_strain",
    "sevennet_calculator": "finite_strain", "voigt_strain": "finite_strain",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        if "." not in module:
            module = f"irreptensor_ml.foundation.{module}"
        return getattr(import_module(module), name)
    raise AttributeError(f"module 'irreptensor_ml.foundation' has no attribute {name!r}")
