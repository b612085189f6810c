"""Predict crystal tensors of new structures with a trained :class:`TensorPredictor`.

Pipeline: structure -> periodic radius graph (cutoff from the model's training config) ->
batch -> model (physical irreps: the normalization and output transform live in the model)
-> ``irreptensor.compose`` (Cartesian tensor in the structure's Cartesian frame).

Units of the results: elastic GPa, dielectric dimensionless, piezoelectric C/m^2.

``model`` arguments accept a run directory or ``model.pt`` path (loaded with
:func:`irreptensor_ml.train.load_model`), an already loaded ``(model, normalizers, config)``
tuple, a :class:`LoadedModel`, or ``None`` for the shipped pretrained model of the property
(``irreptensor_ml/pretrained/<property>/model.pt`` with its ``MODEL_CARD.md``; where none is
shipped a :class:`NoPretrainedModelError` says so). A shipped model whose card shows that it does
not beat a trivial baseline on the test set (see the card) is loaded with a ``UserWarning``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
import torch

import irreptensor as it
from irreptensor_ml.metrics import check_property
from irreptensor_ml.data.records import PARTS

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Default neighbor cutoff (Angstrom) if the training config does not name one.
DEFAULT_CUTOFF = 5.0


class NoPretrainedModelError(FileNotFoundError):
    """``model=None`` was given but no pretrained model is shipped for the property."""


class StructureFileError(ValueError):
    """A structure file does not exist or cannot be parsed (CIF, POSCAR, pymatgen JSON)."""


class MissingHeadError(ValueError):
    """The model has no output head for the requested property."""


@dataclasses.dataclass
class LoadedModel:
    """A trained predictor ready for inference.

    Attributes:
        model: the ``TensorPredictor`` (in eval mode); it returns physical units by itself.
        normalizers: ``{property: IrrepNormalizer}``: copies of the model's latent normalization,
            for inspection only (inference does not use them).
        config: the training config dict (``data.cutoff`` gives the graph cutoff).
        source: where it was loaded from (path string), for messages.
    """

    model: torch.nn.Module
    normalizers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<in memory>"

    @property
    def properties(self) -> list[str]:
        """Properties the model has a head for."""
        return list(self.model.heads.keys())

    @property
    def cutoff(self) -> float:
        """Neighbor cutoff (Angstrom) for the graphs: the training config's, else the trunk's."""
        trunk = getattr(self.model, "trunk", None)
        fallback = float(getattr(trunk, "cutoff", DEFAULT_CUTOFF))
        return graph_cutoff(self.config, default=fallback)

    def require(self, property: str) -> None:
        """Raise :class:`MissingHeadError` naming ``property`` if the model cannot predict it."""
        check_property(property)
        if property not in self.properties:
            raise MissingHeadError(
                f"model {self.source} has no head for property {property!r} "
                f"(heads: {', '.join(self.properties) or 'none'})"
            )


def graph_cutoff(config: Mapping[str, Any], default: float = DEFAULT_CUTOFF) -> float:
    """Neighbor cutoff from a training config (``data.cutoff``; ``model.trunk.cutoff`` or
    ``model.cutoff`` as fallbacks), or ``default``."""
    for path in (("data", "cutoff"), ("model", "trunk", "cutoff"), ("model", "cutoff")):
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            return float(node)
    return float(default)


def pretrained_dir() -> Path:
    """Folder of the shipped pretrained models (``irreptensor_ml/pretrained``)."""
    return Path(str(importlib.resources.files("irreptensor_ml"))) / "pretrained"


def pretrained_model_path(property: str) -> Path:
    """Path of the shipped pretrained model of ``property``.

    Raises:
        NoPretrainedModelError: when no such model is shipped with the package.
    """
    check_property(property)
    base = pretrained_dir()
    for cand in (base / property / "model.pt", base / f"{property}.pt"):
        if cand.is_file():
            return cand
    raise NoPretrainedModelError(
        f"no pretrained model is shipped for property {property!r} (looked in {base}); "
        "pass a trained run directory or model.pt as model (e.g. --model runs/my_run)"
    )


def _warn_if_below_baseline(card_path: Path) -> None:
    """Warn when a shipped model's card says a structure-blind predictor did as well on test."""
    import json

    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        return
    err = (card.get("test_metrics") or {}).get("frobenius_mae")
    beaten_by = [name for name, b in (card.get("baselines") or {}).items()
                 if err is not None and b.get("frobenius_mae") is not None and err >= b["frobenius_mae"]]
    if beaten_by:
        warnings.warn(
            f"the shipped {card.get('property')} model (test Frobenius MAE {err:.4g}) does not beat the "
            f"trivial baseline(s) {', '.join(beaten_by)} on the test set; see {card_path.with_name('MODEL_CARD.md')}",
            UserWarning, stacklevel=3,
        )


def load_predictor(model: Any = None, property: str | None = None) -> LoadedModel:
    """Resolve any accepted ``model`` argument (see module doc) to a :class:`LoadedModel`.

    Args:
        model: ``None``, a path (run dir or ``model.pt``), a ``(model, normalizers, config)``
            tuple or a :class:`LoadedModel`.
        property: needed only when ``model`` is ``None`` (to find the pretrained model).

    Raises:
        FileNotFoundError: the path does not exist; :class:`NoPretrainedModelError` for ``None``
            without a shipped model; ``ValueError`` for any other kind of argument.
    """
    if isinstance(model, LoadedModel):
        return model
    if model is None:
        if property is None:
            raise ValueError("load_predictor: model=None needs a property to find a pretrained model")
        model = pretrained_model_path(property)
        _warn_if_below_baseline(Path(model).parent / "card.json")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        from irreptensor_ml.train import load_model

        net, normalizers, config = load_model(path)
        net.eval()
        return LoadedModel(net, normalizers, config, source=str(path))
    if isinstance(model, tuple) and len(model) == 3:
        net, normalizers, config = model
        net.eval()
        return LoadedModel(net, normalizers, dict(config or {}))
    raise ValueError(
        "model must be None, a run directory / model.pt path, a (model, normalizers, config) "
        f"tuple or a LoadedModel; got {type(model).__name__}"
    )


def read_structure(path: str | os.PathLike[str]) -> "Structure":  # noqa: F821
    """Read one structure from a CIF, POSCAR/CONTCAR or pymatgen JSON file.

    The format is taken from the file name as pymatgen does (``*.cif``, ``POSCAR*``, ``*.json``
    ...); a name pymatgen does not recognize is tried as CIF, POSCAR and JSON in turn.

    Raises:
        StructureFileError: the file is missing or holds no parseable structure (message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise StructureFileError(f"file not found: {p}")
    # pymatgen warns before it raises on a bad file; keep those warnings for good files only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structure = _parse_structure_file(p)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if len(structure) == 0:
        raise StructureFileError(f"cannot read a structure from {p}: it has no sites")
    if not structure.is_ordered:
        raise StructureFileError(f"cannot use structure from {p}: it is disordered (partial occupancies)")
    return structure


def _parse_structure_file(p: Path) -> "Structure":  # noqa: F821
    """``Structure.from_file``, falling back to content sniffing for unknown file names."""
    from pymatgen.core import Structure

    try:
        return Structure.from_file(str(p))
    except Exception as exc:  # pymatgen raises many exception types for bad files
        if "Unrecognized extension" not in str(exc) and "not supported" not in str(exc):
            raise StructureFileError(f"cannot read a structure from {p}: {exc}") from exc
        text = p.read_text(errors="replace")
        for fmt in ("cif", "poscar", "json"):
            try:
                with warnings.catch_warnings():  # warnings of a wrong-format attempt are noise
                    warnings.simplefilter("ignore")
                    return Structure.from_str(text, fmt=fmt)
            except Exception:  # try the next format
                continue
        raise StructureFileError(
            f"cannot read a structure from {p}: not a CIF, POSCAR or pymatgen JSON file"
        ) from exc


def _as_structures(structures: Any) -> list[Any]:
    """A single structure / path or a sequence of them -> list of pymatgen Structures."""
    from pymatgen.core import Structure

    if isinstance(structures, (Structure, str, os.PathLike)):
        structures = [structures]
    out = []
    for s in structures:
        if isinstance(s, (str, os.PathLike)):
            s = read_structure(s)
        if not isinstance(s, Structure):
            raise ValueError(
                f"structures: expected pymatgen Structure or file path, got {type(s).__name__}"
            )
        out.append(s)
    return out


def _batches(structures: Sequence[Any], cutoff: float, batch_size: int) -> Any:
    """Yield :class:`~irreptensor_ml.data.batch.Batch` objects (no targets) for inference."""
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import structure_to_graph

    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        samples = []
        for k, s in enumerate(chunk):
            g = structure_to_graph(s, cutoff=cutoff)
            g.material_id = f"structure-{start + k}"
            samples.append((g, {}))
        yield collate(samples)


@torch.no_grad()
def predict_irreps(
    structures: Any,
    property: str = "elastic",
    model: Any = None,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    part: str = "total",
) -> np.ndarray:
    """Predicted irreps in PHYSICAL units (denormalized), ``(N, dim)`` float64 numpy.

    Arguments as in :func:`predict`. The layout is ``irreptensor.irreps(property)``.
    """
    check_property(property)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    known_parts = PARTS.get(property, ())
    if part != "total" and part not in known_parts:
        choices = ", ".join(repr(p) for p in ("total", *known_parts))
        raise ValueError(f"part {part!r} of {property}: expected one of {choices}")
    loaded = load_predictor(model, property)
    loaded.require(property)
    key = property
    if part != "total":
        if part not in getattr(loaded.model.outputs[property], "parts", ()):
            raise ValueError(
                f"this {property} model predicts only the total tensor, not the {part} part "
                f"(train it with model.heads.{property}.parts: true)"
            )
        key = f"{property}_{part}"
    items = _as_structures(structures)
    dim = int(loaded.model.outputs[property].dim)
    if not items:
        return np.zeros((0, dim))
    net = loaded.model
    param = next(net.parameters())
    if param.device != torch.device(device):
        net = copy.deepcopy(net).to(device)  # never move (or break) the caller's model
    was_training = net.training
    net.eval()
    dtype = param.dtype
    outs = []
    try:
        for batch in _batches(items, loaded.cutoff, batch_size):
            batch = batch.to(device, dtype)
            outs.append(net(batch)[key].detach().to("cpu", torch.float64))
    finally:
        net.train(was_training)
    return torch.cat(outs).numpy()


def predict(
    structures: Any,
    property: str = "elastic",
    model: Any = None,
    as_: Literal["array", "pymatgen"] = "array",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    part: str = "total",
) -> np.ndarray | list[Any]:
    """Predict the Cartesian ``property`` tensor of each structure.

    Args:
        structures: a pymatgen ``Structure``, a path to a CIF/POSCAR/pymatgen-JSON file, or a
            sequence of these.
        property: ``"elastic"``, ``"dielectric"`` or ``"piezoelectric"``.
        model: run directory or ``model.pt`` path, loaded ``(model, normalizers, config)`` tuple,
            :class:`LoadedModel`, or ``None`` for the shipped pretrained model.
        as_: ``"array"`` -> numpy ``(N, 3, ..., 3)`` float64 Cartesian tensors;
            ``"pymatgen"`` -> list of ``ElasticTensor`` (elastic) or ``Tensor`` (others).
        batch_size: structures per forward pass.
        device: torch device for the model.
        part: ``"total"`` (default), or for the dielectric tensor ``"electronic"`` (the
            high-frequency tensor; refractive index ``n = sqrt(trace / 3)``) or ``"ionic"``
            (models trained with parts; the shipped dielectric model is).

    Returns:
        Tensors in the structures' Cartesian frames (elastic GPa, piezoelectric C/m^2).

    Raises:
        ValueError: unknown property or ``as_``; :class:`MissingHeadError` when the model has
            no head for ``property``; :class:`StructureFileError` for unreadable files;
            :class:`NoPretrainedModelError` for ``model=None`` without a shipped model.
    """
    check_property(property)
    if as_ not in ("array", "pymatgen"):
        raise ValueError(f"as_ must be 'array' or 'pymatgen', got {as_!r}")
    x = predict_irreps(structures, property, model, batch_size=batch_size, device=device, part=part)
    cart = np.asarray(it.compose(x, property), dtype=np.float64)
    if as_ == "array":
        return cart
    if property == "elastic":
        from pymatgen.analysis.elasticity import ElasticTensor

        return [ElasticTensor(c) for c in cart]
    from pymatgen.core.tensors import Tensor

    return [Tensor(c) for c in cart]
