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

Every structure is checked before it is predicted; a ``UserWarning`` names it (``structure 2
(file AmCl.cif, AmCl)``) and the reason, and ``strict=True`` raises :class:`StructureCheckError`
instead:

* elements that never occur in the model's training data (:func:`training_elements`): their
  prediction comes from embeddings that no training step touched;
* non-physical geometry: two sites, periodic images included, closer than
  :data:`MIN_ATOM_DISTANCE`, or a volume per atom outside :data:`VOLUME_PER_ATOM_RANGE`.

One bad structure does not fail the others: a structure whose graph cannot be built, whose
forward pass raises or whose output is not finite gets NaN rows (``predict``: a NaN tensor, or
``None`` with ``as_="pymatgen"``) and a warning naming it; the others are predicted normally.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gzip
import importlib.resources
import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
import torch

import irreptensor as it
from irreptensor_ml.metrics import check_property
from irreptensor_ml.data.records import (
    MIN_SITE_DISTANCE,
    PARTS,
    PROPERTY_RANK,
    closest_site_pair,
    describe_site_pair,
    find_files,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Default neighbor cutoff (Angstrom) if the training config does not name one.
DEFAULT_CUTOFF = 5.0

#: Closest distance (Angstrom) between two sites, periodic images included, of a structure a
#: prediction is trusted for; the training data hold no closer pair (records.MIN_SITE_DISTANCE).
MIN_ATOM_DISTANCE = MIN_SITE_DISTANCE

#: Plausible volume per atom (Angstrom^3) of a bulk crystal: the shipped data span 5.7 to 64;
#: diamond has 5.7, bcc Cs 116.  Outside, e.g. one H atom in a 0.5 A cell, the output is garbage.
VOLUME_PER_ATOM_RANGE = (2.0, 200.0)


class NoPretrainedModelError(FileNotFoundError):
    """``model=None`` was given but no pretrained model is shipped for the property."""


class StructureFileError(ValueError):
    """A structure file does not exist or cannot be parsed (CIF, POSCAR, pymatgen JSON)."""


class MissingHeadError(ValueError):
    """The model has no output head for the requested property."""


class StructureCheckError(ValueError):
    """``strict=True``: a structure has elements unseen in training, a non-physical geometry, or
    no finite prediction; the message names the structure(s) and the reason."""


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


def _as_structures(structures: Any) -> tuple[list[Any], list[str]]:
    """A single structure / path or a sequence of them -> (pymatgen Structures, labels).

    A label names the structure in warnings: ``"structure 2 (file x.cif, AmCl)"``."""
    from pymatgen.core import Structure

    if isinstance(structures, (Structure, str, os.PathLike)):
        structures = [structures]
    out, labels = [], []
    for k, s in enumerate(structures):
        where = ""
        if isinstance(s, (str, os.PathLike)):
            where = f"file {s}, "
            s = read_structure(s)
        if not isinstance(s, Structure):
            raise ValueError(
                f"structures: expected pymatgen Structure or file path, got {type(s).__name__}"
            )
        out.append(s)
        labels.append(f"structure {k} ({where}{s.composition.reduced_formula})")
    return out, labels


@functools.lru_cache(maxsize=64)
def data_elements(property: str, sources: tuple[str, ...], root: str | None = None) -> frozenset[int]:
    """Atomic numbers occurring in the data files of ``property`` selected by ``sources``.

    Read from the files' JSON (the ``element`` of each site's species; no pymatgen objects,
    ~0.1 s per file) and cached per arguments.  Raises ``ValueError`` when no file matches.
    """
    from pymatgen.core.periodic_table import Element

    symbols: set[str] = set()
    for path in find_files(property, sources, root):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    sites = json.loads(line)["structure"]["sites"]
                    symbols.update(sp["element"] for site in sites for sp in site["species"])
                except (ValueError, KeyError, TypeError):  # a bad record is not training data
                    continue
    return frozenset(Element(sym).Z for sym in symbols if Element.is_valid_symbol(sym))


def _training_data(loaded: LoadedModel) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(properties, sources, data root) of the data the model was trained on, from its config.

    The properties are the model's heads; a trunk that came from another run (transfer
    ``pretrain_id``, ``model.pretrained_trunk``) saw that run's property too: the one its
    ``pretrain-<property>-...`` id names, else every property of the data section.  Missing
    keys take the training defaults (sources ``("mp",)``, the shipped files).
    """
    config = loaded.config or {}
    data = dict(config.get("data") or {})
    sources = data.get("sources") or ("mp",)
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    props = set(loaded.properties)
    pre = (config.get("transfer") or {}).get("pretrain_id")
    if pre or (config.get("model") or {}).get("pretrained_trunk"):
        m = re.match(r"pretrain-([a-z]+)-", str(pre or ""))
        if m and m.group(1) in PROPERTY_RANK:
            props.add(m.group(1))
        else:
            props.update(data.get("properties") or PROPERTY_RANK)
    root = data.get("data_root")
    return tuple(sorted(props)), sources, (str(root) if root else None)


def training_elements(loaded: LoadedModel) -> frozenset[int] | None:
    """Atomic numbers of the model's training data (see :func:`_training_data`), or ``None``
    (with a warning) when those data files are not found, e.g. a ``data_root`` of another machine.

    An element found only in the validation or test materials counts as seen: the files, not
    the split, are read."""
    props, sources, root = _training_data(loaded)
    seen: set[int] = set()
    for prop in props:
        try:
            seen |= data_elements(prop, sources, root)
        except ValueError as exc:
            if "no data file" in str(exc) and prop not in loaded.properties:
                continue  # a source without a file of the pretraining property
            warnings.warn(f"model {loaded.source}: cannot check elements against its training data ({exc})",
                          UserWarning, stacklevel=3)
            return None
    return frozenset(seen)


def structure_problems(structure: Any, seen: frozenset[int] | None = None) -> list[str]:
    """Why a prediction for ``structure`` cannot be trusted (empty list: no reason found).

    Checks elements against ``seen`` (atomic numbers of the training data; ``None`` skips
    this), the closest pair of sites (:data:`MIN_ATOM_DISTANCE`, periodic images included) and
    the volume per atom (:data:`VOLUME_PER_ATOM_RANGE`)."""
    from pymatgen.core.periodic_table import Element

    if len(structure) == 0:
        return ["the structure has no sites"]
    problems = []
    if seen is not None:
        unseen = sorted({el.Z for site in structure for el in site.species} - seen)
        if unseen:
            problems.append(
                f"element(s) {', '.join(Element.from_Z(z).symbol for z in unseen)} never occur in the "
                "model's training data (untrained embeddings)"
            )
    try:
        pair = closest_site_pair(structure, MIN_ATOM_DISTANCE)
    except Exception as exc:  # e.g. a singular lattice
        problems.append(f"interatomic distances cannot be computed ({type(exc).__name__}: {exc})")
    else:
        if pair is not None:
            problems.append(f"{describe_site_pair(structure, pair)} (< {MIN_ATOM_DISTANCE} A)")
    lo, hi = VOLUME_PER_ATOM_RANGE
    vpa = float(structure.volume) / len(structure)
    if not lo <= vpa <= hi:
        problems.append(f"volume per atom {vpa:.3g} A^3 outside the plausible range [{lo:g}, {hi:g}] A^3")
    return problems


def _graphs(structures: Sequence[Any], cutoff: float) -> tuple[list[Any], dict[int, str]]:
    """Graphs of the structures (``None`` where building failed) and ``{index: reason}`` of failures."""
    from irreptensor_ml.data.graphs import structure_to_graph

    graphs: list[Any] = []
    failed: dict[int, str] = {}
    for k, s in enumerate(structures):
        try:
            g = structure_to_graph(s, cutoff=cutoff)
            g.material_id = f"structure-{k}"
        except Exception as exc:  # noqa: BLE001 - reported per structure, the others go on
            g = None
            failed[k] = f"its graph cannot be built ({type(exc).__name__}: {_first_line(exc)})"
        graphs.append(g)
    return graphs, failed


#: errors of the forward pass that one structure's input causes (e.g. an atomic number beyond the
#: embedding table); anything else (device, dtype, a broken model) fails the whole call.
_STRUCTURE_ERRORS = (ValueError, KeyError, IndexError)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _forward(net: torch.nn.Module, graphs: Sequence[Any], key: str, device: Any, dtype: torch.dtype) -> np.ndarray:
    """Model output ``key`` of a list of graphs, ``(len(graphs), dim)`` float64."""
    from irreptensor_ml.data.batch import collate

    batch = collate([(g, {}) for g in graphs]).to(device, dtype)
    return net(batch)[key].detach().to("cpu", torch.float64).numpy()


@torch.no_grad()
def predict_irreps(
    structures: Any,
    property: str = "elastic",
    model: Any = None,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    part: str = "total",
    strict: bool = False,
) -> np.ndarray:
    """Predicted irreps in PHYSICAL units (denormalized), ``(N, dim)`` float64 numpy.

    Arguments as in :func:`predict`. The layout is ``irreptensor.irreps(property)``; a structure
    without a finite prediction has a NaN row (and a warning naming it).
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
    items, labels = _as_structures(structures)
    dim = int(loaded.model.outputs[property].dim)
    if not items:
        return np.zeros((0, dim))
    seen = training_elements(loaded)
    flagged = {k: p for k, s in enumerate(items) if (p := structure_problems(s, seen))}
    _report(flagged, labels, strict, "its prediction is unreliable")

    net = loaded.model
    param = next(net.parameters())
    if param.device != torch.device(device):
        net = copy.deepcopy(net).to(device)  # never move (or break) the caller's model
    was_training = net.training
    net.eval()
    dtype = param.dtype
    out = np.full((len(items), dim), np.nan)
    graphs, failed = _graphs(items, loaded.cutoff)
    good = [k for k, g in enumerate(graphs) if g is not None]
    try:
        # a plain loop, not Trainer.predict: a structure that raises is retried alone, not failing the rest
        for start in range(0, len(good), batch_size):
            chunk = good[start:start + batch_size]
            try:
                rows = _forward(net, [graphs[k] for k in chunk], key, device, dtype)
                if np.isfinite(rows).all():
                    out[chunk] = rows
                    continue
            except _STRUCTURE_ERRORS:  # isolate the structure that raised, below
                pass
            for k in chunk:  # one at a time, so that one bad structure cannot spoil the batch
                try:
                    row = _forward(net, [graphs[k]], key, device, dtype)[0]
                except _STRUCTURE_ERRORS as exc:  # reported per structure
                    failed[k] = f"the model refuses it ({type(exc).__name__}: {_first_line(exc)})"
                    continue
                if np.isfinite(row).all():
                    out[k] = row
                else:
                    failed[k] = "the model's output is not finite"
    finally:
        net.train(was_training)
    if failed:
        _report({k: [failed[k], *flagged.get(k, [])] for k in sorted(failed)}, labels, strict,
                "its row is NaN")
    return out


def _report(problems: Mapping[int, list[str]], labels: Sequence[str], strict: bool, consequence: str) -> None:
    """Warn once per structure (or raise one :class:`StructureCheckError` for all when strict)."""
    if not problems:
        return
    lines = [f"{labels[k]}: {'; '.join(p)}" for k, p in problems.items()]
    if strict:
        raise StructureCheckError(
            f"{len(lines)} structure(s) fail the checks (strict=True): " + " | ".join(lines)
        )
    for line in lines:
        warnings.warn(f"{line}; {consequence}", UserWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside this module (and torch's
    ``no_grad`` wrapper), i.e. at the user's ``predict``/``predict_irreps`` call."""
    import sys

    level, frame = 2, sys._getframe(2)  # 1 = the caller of this function (the warn site)
    while frame is not None and (frame.f_code.co_filename == __file__
                                 or frame.f_code.co_filename.endswith(os.path.join("torch", "utils", "_contextlib.py"))):
        level, frame = level + 1, frame.f_back
    return level

def predict(
    structures: Any,
    property: str = "elastic",
    model: Any = None,
    as_: Literal["array", "pymatgen"] = "array",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    part: str = "total",
    strict: bool = False,
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
        strict: raise :class:`StructureCheckError` instead of warning when a structure has
            elements unseen in training or a non-physical geometry, or has no finite prediction.

    Returns:
        Tensors in the structures' Cartesian frames (elastic GPa, piezoelectric C/m^2); a
        structure without a finite prediction gets a NaN tensor (``None`` with ``"pymatgen"``).

    Warns:
        UserWarning: per structure (``structure <index> (file <path>, <formula>)``) with the reason:
            unseen elements, atoms closer than :data:`MIN_ATOM_DISTANCE`, a volume per atom outside
            :data:`VOLUME_PER_ATOM_RANGE`, or no finite prediction.

    Raises:
        ValueError: unknown property or ``as_``; :class:`MissingHeadError` when the model has
            no head for ``property``; :class:`StructureFileError` for unreadable files;
            :class:`NoPretrainedModelError` for ``model=None`` without a shipped model;
            :class:`StructureCheckError` with ``strict=True``.
    """
    check_property(property)
    if as_ not in ("array", "pymatgen"):
        raise ValueError(f"as_ must be 'array' or 'pymatgen', got {as_!r}")
    x = predict_irreps(structures, property, model, batch_size=batch_size, device=device, part=part,
                       strict=strict)
    ok = np.isfinite(x).all(axis=1)
    cart = np.full((len(x),) + (3,) * PROPERTY_RANK[property], np.nan)
    if ok.any():  # compose refuses NaN: the failed rows stay NaN
        cart[ok] = np.asarray(it.compose(x[ok], property), dtype=np.float64)
    if as_ == "array":
        return cart
    if property == "elastic":
        from pymatgen.analysis.elasticity import ElasticTensor

        return [ElasticTensor(c) if good else None for c, good in zip(cart, ok)]
    from pymatgen.core.tensors import Tensor

    return [Tensor(c) if good else None for c, good in zip(cart, ok)]
