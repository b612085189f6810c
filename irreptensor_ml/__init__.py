"""irreptensor_ml: equivariant graph networks that predict crystal tensors as irreps.

The four entry points, imported on first use (``import irreptensor_ml`` loads neither torch nor
pymatgen)::

    irreptensor_ml.predict(structures, "elastic", model=None)  # Cartesian tensors; None: shipped model
    irreptensor_ml.load_model("runs/x")     # (model, normalizers, config) of a run dir or model.pt
    irreptensor_ml.train(config, run_dir)   # = irreptensor_ml.fit: train a run, returns its model.pt
    irreptensor_ml.evaluate(run_dir)        # = evaluate_run: metrics, predictions, plots of a split

``predict``, ``train`` and ``evaluate`` are also the modules :mod:`.predict`, :mod:`.train` and
:mod:`.evaluate`: calling the module calls its function, so ``irreptensor_ml.predict(...)``,
``from irreptensor_ml.predict import predict`` and ``from irreptensor_ml import predict as P;
P.read_structure(...)`` all work, whichever is imported first.

Sub-packages: ``data`` (records -> graphs -> batches), ``model`` (trunk, heads), ``train``
(configuration, Lightning module, training driver), ``foundation`` (SevenNet-0 as a pretrained
trunk), ``transfer`` (the transfer-learning study), ``cli`` (``irreptensor-ml``), ``pretrained``
(the shipped models and their cards).
"""

import importlib
import sys
import types

#: Submodules that are also exported functions: module name -> the function calling it runs.
_CALLABLE_MODULES = {"predict": "predict", "train": "fit", "evaluate": "evaluate_run"}
#: Plain function exports: name -> module that defines it.
_FUNCTIONS = {"fit": "irreptensor_ml.train", "load_model": "irreptensor_ml.train"}

__all__ = ["evaluate", "fit", "load_model", "predict", "train"]


class _CallableModule(types.ModuleType):
    """A submodule that can be called: ``irreptensor_ml.predict(...)`` runs its ``predict``.

    The package attribute ``predict`` is always the submodule (importing a submodule binds it on
    the package), so the submodule itself is made callable instead of shadowing it with the
    function.  The function is looked up at each call, so patching it is seen."""

    def __call__(self, *args, **kwargs):
        return getattr(self, _CALLABLE_MODULES[self.__name__.rpartition(".")[2]])(*args, **kwargs)


class _Package(types.ModuleType):
    """Module type of this package: turns ``predict``, ``train`` and ``evaluate`` into
    :class:`_CallableModule` when the import system binds them here, whatever imports them."""

    def __setattr__(self, name, value):
        if (name in _CALLABLE_MODULES and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str):
    """Lazy exports (PEP 562): the torch-dependent modules load on first access."""
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
