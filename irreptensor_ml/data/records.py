"""Load and validate crystal-tensor records from the shipped gzip JSON Lines files.

A *record* is one (structure, tensor) pair of one property from one file. The files live in
``irreptensor_ml/datasets/`` (named ``<property>_<source>.jsonl.gz``; see the README there for
provenance, units and frames) and are found through :mod:`importlib.resources`, so they work
offline from an installed package.

Every record is validated; bad records are **skipped and reported by id**, never dropped
silently. The checks, in order (the first failing one is the reported reason):

``json``                 the line is not valid JSON or lacks a required key
``duplicate_id``         the material id already occurred earlier in the same file
``tensor_unparseable``   the tensor is not a numeric nested list
``shape``                wrong Cartesian shape for the property (3x3, 3x3x3, 3x3x3x3)
``nonfinite``            NaN or inf in the tensor
``tensor_magnitude``     a component beyond the property's physical bound
                         (:data:`TENSOR_MAGNITUDE_BOUNDS`: elastic 1e4 GPa, dielectric 1e5,
                         piezoelectric 1e3 C/m^2); a finite 1e300 would make the normalizer
                         scale infinite and the trained model NaN
``index_asymmetric``     the tensor lacks the property's index symmetry
                         (``eps_ij = eps_ji``; ``e_ijk = e_ikj``; ``C_ijkl = C_jikl = C_klij``)
``parts``                a dielectric record's ``tensor_electronic``/``tensor_ionic`` (optional;
                         both or neither) is malformed, non-finite, beyond the bound, asymmetric,
                         or does not add up to ``tensor`` (relative 1e-6)
``structure_parse``      ``Structure.from_dict`` fails, the structure has no sites, or its
                         interatomic distances cannot be computed
``structure_disordered`` partial occupancies (a graph needs one species per site)
``structure_overlap``    two sites (or a site and its own periodic image) closer than
                         :data:`MIN_SITE_DISTANCE` (0.5 Angstrom): overlapping atoms give
                         zero-length edges and a NaN model
``symmetry``             the tensor is inconsistent with the structure's point group:
                         ``max_g ||g.T - T||_F / ||T||_F > symmetry_tolerance`` with the Cartesian
                         point-group operations ``g`` of ``SpacegroupAnalyzer(structure,
                         symprec).get_point_group_operations(cartesian=True)``; also a record
                         whose point group cannot be determined (the detail names the exception)

The symmetry check costs ~15 ms per structure; its residuals are cached on disk (see
:mod:`irreptensor_ml.data.cache`) keyed by the file content and ``symprec``, and it can be
switched off with ``check_symmetry=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import gzip
import importlib.resources
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import irreptensor as it
import numpy as np

from irreptensor_ml.atomic import atomic_write_json
from irreptensor_ml.data.cache import (
    CACHE_VERSION,
    file_sha256,
    hash_parts,
    read_json,
    resolve_cache_dir,
)
from irreptensor_ml.deprecation import renamed
from irreptensor_ml.metrics import PARTS, TENSOR_RANK, part_key  # noqa: F401  (PARTS, part_key re-exported)

logger = logging.getLogger(__name__)

#: Tensor rank of each supported property (these names are also the ``irreptensor`` kinds).
PROPERTY_RANK: dict[str, int] = TENSOR_RANK  # one table (irreptensor_ml.metrics), two names

#: Known source names and the file-name suffix patterns (after ``<property>_``) they select.
SOURCE_PATTERNS: dict[str, tuple[str, ...]] = {
    "mp": ("mp*",),
    "matten": ("matten",),
    "abo3p4mm": ("abo3p4mm",),
    "all": ("*",),
}

_REQUIRED_KEYS = ("material_id", "structure", "tensor")

_PARTS_SUM_RTOL = 1e-6

#: Largest accepted ``|component|`` of a record's tensor (and of its parts), in the property's
#: units: bounds an order of magnitude above any real material (the shipped data peak at
#: elastic 1.2e3 GPa, dielectric 2.1e3, piezoelectric 1.2e2 C/m^2), so only garbage is refused.
TENSOR_MAGNITUDE_BOUNDS: dict[str, float] = {"elastic": 1e4, "dielectric": 1e5, "piezoelectric": 1e3}

#: Smallest accepted distance (Angstrom) between two sites, periodic images included: the
#: shortest bond in the shipped data is 0.95 A (O-H); closer sites are overlapping atoms.
MIN_SITE_DISTANCE = 0.5


_INDEX_SYMMETRY_RTOL = 1e-6

if TYPE_CHECKING:  # pymatgen is imported where structures are read, so cached data loads without it
    from pymatgen.core import Structure


def _structure_from_dict(d: dict) -> "Structure":
    from pymatgen.core import Structure

    return Structure.from_dict(d)


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One validated (structure, tensor) pair.

    Attributes:
        material_id: id from the source file (``mp-…``, ``matten-n100-…``, ``abo3p4mm-…``).
        property: ``"dielectric"``, ``"piezoelectric"`` or ``"elastic"``.
        source_file: file name the record came from, e.g. ``"elastic_mp2015.jsonl.gz"``.
        structure: the pymatgen ``Structure``; ``tensor`` is in this structure's Cartesian frame.
        tensor: full Cartesian tensor, float64, shape ``(3,)*rank``; units: elastic GPa,
            dielectric dimensionless, piezoelectric C/m^2.
        meta: the file's ``meta`` dict plus ``formula`` and ``source`` and, when the symmetry
            check ran, ``sym_residual_check`` (the residual computed here).
        parts: ``{part: tensor}`` of :data:`PARTS` when the file has them (they sum to
            ``tensor``), else empty.
    """

    material_id: str
    property: str
    source_file: str
    structure: Structure
    tensor: np.ndarray
    meta: dict[str, Any]
    parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def uid(self) -> str:
        """Unique key of the record across files: ``"<source_file>:<material_id>"``."""
        return f"{self.source_file}:{self.material_id}"


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """A record that failed validation: where it was, its id (if readable) and why."""

    source_file: str
    line: int
    material_id: str
    reason: str
    detail: str = ""


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_records` read, kept and skipped for one property."""

    property: str
    files: list[str] = dataclasses.field(default_factory=list)
    n_read: int = 0
    n_loaded: int = 0
    skipped: list[SkippedRecord] = dataclasses.field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Number of skipped records."""
        return len(self.skipped)

    def counts_by_reason(self) -> dict[str, int]:
        """Number of skipped records per reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        """One line: counts per file total and per skip reason, then skipped ids."""
        text = (
            f"{self.property}: read {self.n_read} records from {', '.join(self.files)}; "
            f"loaded {self.n_loaded}, skipped {self.n_skipped}"
        )
        if self.skipped:
            text += f" {self.counts_by_reason()}: " + ", ".join(
                f"{s.source_file}:{s.material_id} ({s.reason})" for s in self.skipped
            )
        return text


class RecordList(list[Record]):
    """A ``list[Record]`` that also carries the :class:`LoadReport` of the load (``.report``)."""

    def __init__(self, records: Iterable[Record], report: LoadReport) -> None:
        super().__init__(records)
        self.report = report


def datasets_root() -> Path:
    """Directory of the data files shipped inside the ``irreptensor_ml`` package."""
    return Path(str(importlib.resources.files("irreptensor_ml") / "datasets"))


def property_rank(property: str) -> int:
    """Cartesian tensor rank of ``property`` (2, 3 or 4); raise ``ValueError`` naming it if unknown.

    (Validating a name without its rank: :func:`irreptensor_ml.metrics.check_property`.)
    """
    if property not in PROPERTY_RANK:
        raise ValueError(
            f"unknown property {property!r}; expected one of {sorted(PROPERTY_RANK)}"
        )
    return PROPERTY_RANK[property]


def find_files(
    property: str, sources: str | Sequence[str] = ("mp",), root: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Data files of ``property`` selected by ``sources`` (sorted, no duplicates).

    Raises ``ValueError`` for an unknown property or source name, or when nothing matches.
    A known source that has no file for this property (e.g. ``"matten"`` for dielectric) is
    simply absent from the result.
    """
    property_rank(property)
    if isinstance(sources, str):
        sources = (sources,)
    unknown = [s for s in sources if s not in SOURCE_PATTERNS]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; expected some of {sorted(SOURCE_PATTERNS)}")
    base = datasets_root() if root is None else Path(root)
    files: set[Path] = set()
    for source in sources:
        for pattern in SOURCE_PATTERNS[source]:
            files.update(base.glob(f"{property}_{pattern}.jsonl.gz"))
    if not files:
        raise ValueError(
            f"no data file for property {property!r} and sources {list(sources)} in {base}"
        )
    return sorted(files)


def closest_site_pair(
    structure: "Structure", within: float = MIN_SITE_DISTANCE
) -> tuple[float, int, int] | None:
    """Closest pair of sites nearer than ``within`` Angstrom: ``(distance, i, j)``, else ``None``.

    Periodic images count (``i == j`` is a site and its own image), so a cell shorter than
    ``within`` is caught too.  Uses pymatgen's cell-list ``get_neighbor_list`` (~0.1 ms).
    """
    centers, neighbors, _, dist = structure.get_neighbor_list(r=float(within))
    dist = np.asarray(dist, dtype=np.float64)
    close = np.flatnonzero(dist < within)
    if close.size == 0:
        return None
    k = close[np.argmin(dist[close])]
    return float(dist[k]), int(centers[k]), int(neighbors[k])


def describe_site_pair(structure: "Structure", pair: tuple[float, int, int]) -> str:
    """``"sites 0 (Na) and 1 (Na) are 0 A apart"``-style text of a :func:`closest_site_pair`."""
    d, i, j = pair
    if i == j:
        return f"site {i} ({structure[i].species_string}) is {d:.3g} A from its own periodic image"
    return (f"sites {i} ({structure[i].species_string}) and {j} ({structure[j].species_string}) "
            f"are {d:.3g} A apart")


def index_symmetry_error(tensor: np.ndarray, property: str) -> float:
    """Largest violation of the property's index symmetry, relative to ``max|T|`` (0 if T = 0)."""
    t = np.asarray(tensor, dtype=np.float64)
    if property == "dielectric":
        perms = [(1, 0)]
    elif property == "piezoelectric":
        perms = [(0, 2, 1)]
    elif property == "elastic":
        perms = [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)]
    else:
        property_rank(property)
        raise AssertionError("unreachable")
    scale = float(np.abs(t).max())
    if scale == 0.0:
        return 0.0
    return max(float(np.abs(t - t.transpose(p)).max()) for p in perms) / scale


def structure_symmetry_residual(
    structure: Structure, tensor: np.ndarray, property: str, symprec: float = 0.01
) -> float:
    """Relative residual ``max_g ||g.T - T||_F / ||T||_F`` over the structure's point group.

    ``g`` are the Cartesian point-group operations from pymatgen's ``SpacegroupAnalyzer``
    (spglib, ``symprec`` in Angstrom), made exactly orthogonal by :func:`nearest_orthogonal`;
    ``g.T`` is the tensor rotated by ``irreptensor.rotate``.
    Returns 0 for an all-zero tensor (trivially invariant). Dimensionless.

    The worst single operation, as the data check (``symmetry``) has always measured it; the core's
    ``irreptensor.symmetry_residual(T, kind, ops)`` is another number, the distance from the
    group average ``|T - symmetrize(T)|_F / |T|_F``.
    """
    property_rank(property)
    t = np.asarray(tensor, dtype=np.float64)
    norm = float(np.linalg.norm(t))
    if norm == 0.0:
        return 0.0
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(structure, symprec=symprec).get_point_group_operations(cartesian=True)
    worst = 0.0
    for op in ops:
        g = nearest_orthogonal(np.asarray(op.rotation_matrix, dtype=np.float64))
        rotated = np.asarray(it.rotate(t, g, property))
        worst = max(worst, float(np.linalg.norm(rotated - t)) / norm)
    return worst


def nearest_orthogonal(matrix: np.ndarray) -> np.ndarray:
    """Closest orthogonal matrix (polar factor ``U V^T`` of the SVD ``U S V^T``); keeps det's sign.

    spglib finds operations within ``symprec`` of a symmetry, so for a slightly distorted cell
    the Cartesian operation ``L^T W L^-T`` is only orthogonal to ~1e-3. Its polar factor is the
    rigid rotation (or rotoinversion) closest to it, which is what a tensor can be rotated by.
    """
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    return u @ vt


def _parse_line(
    text: str, property: str, source_file: str, line_no: int, seen: set[str]
) -> tuple[Record | None, SkippedRecord | None]:
    """Validate one JSON line up to (not including) the symmetry check."""
    rank = PROPERTY_RANK[property]

    def bad(mid: str, reason: str, detail: str = "") -> tuple[None, SkippedRecord]:
        return None, SkippedRecord(source_file, line_no, mid, reason, detail)

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return bad(f"line {line_no}", "json", str(exc))
    if not isinstance(raw, dict):
        return bad(f"line {line_no}", "json", "line is not a JSON object")
    mid = str(raw.get("material_id", f"line {line_no}"))
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        return bad(mid, "json", f"missing key(s) {missing}")
    if mid in seen:
        return bad(mid, "duplicate_id", "material id already seen earlier in this file")
    seen.add(mid)
    try:
        tensor = np.array(raw["tensor"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return bad(mid, "tensor_unparseable", str(exc))
    if tensor.shape != (3,) * rank:
        return bad(mid, "shape", f"tensor shape {tensor.shape}, expected {(3,) * rank}")
    if not np.all(np.isfinite(tensor)):
        return bad(mid, "nonfinite", "tensor contains NaN or inf")
    bound = TENSOR_MAGNITUDE_BOUNDS[property]
    peak = float(np.abs(tensor).max())
    if peak > bound:
        return bad(mid, "tensor_magnitude", f"max |component| {peak:.3g} > physical bound {bound:.3g}")
    asym = index_symmetry_error(tensor, property)
    if asym > _INDEX_SYMMETRY_RTOL:
        return bad(mid, "index_asymmetric", f"relative index asymmetry {asym:.3g}")
    parts: dict[str, np.ndarray] = {}
    names = PARTS.get(property, ())
    present = [n for n in names if f"tensor_{n}" in raw]
    if present:
        if len(present) != len(names):
            return bad(mid, "parts", f"has tensor_{present[0]} but not all of {['tensor_' + n for n in names]}")
        for name in names:
            try:
                part = np.array(raw[f"tensor_{name}"], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                return bad(mid, "parts", f"tensor_{name}: {exc}")
            if part.shape != tensor.shape or not np.all(np.isfinite(part)):
                return bad(mid, "parts", f"tensor_{name} has shape {part.shape} or non-finite entries")
            if float(np.abs(part).max()) > bound:
                return bad(mid, "parts", f"tensor_{name} exceeds the physical bound {bound:.3g}")
            if index_symmetry_error(part, property) > _INDEX_SYMMETRY_RTOL:
                return bad(mid, "parts", f"tensor_{name} lacks the index symmetry")
            parts[name] = part
        mismatch = float(np.abs(sum(parts.values()) - tensor).max()) / max(float(np.abs(tensor).max()), 1e-300)
        if mismatch > _PARTS_SUM_RTOL:
            return bad(mid, "parts", f"parts do not add up to the tensor (relative {mismatch:.3g})")
    try:
        structure = _structure_from_dict(raw["structure"])
    except Exception as exc:  # pymatgen raises many types for malformed dicts
        return bad(mid, "structure_parse", f"{type(exc).__name__}: {exc}")
    if len(structure) == 0:
        return bad(mid, "structure_parse", "structure has no sites")
    if not structure.is_ordered:
        return bad(mid, "structure_disordered", "partial occupancies")
    try:
        pair = closest_site_pair(structure)
    except Exception as exc:  # e.g. a singular lattice
        return bad(mid, "structure_parse", f"interatomic distances: {type(exc).__name__}: {exc}")
    if pair is not None:
        return bad(mid, "structure_overlap",
                   f"{describe_site_pair(structure, pair)} (< {MIN_SITE_DISTANCE} A)")
    meta = dict(raw.get("meta") or {})
    meta.setdefault("formula", raw.get("formula", structure.composition.reduced_formula))
    meta.setdefault("source", raw.get("source", ""))
    record = Record(mid, property, source_file, structure, tensor, meta, parts)
    return record, None


def _symmetry_cache_path(cache_dir: Path, path: Path, property: str, symprec: float) -> Path:
    key = hash_parts(CACHE_VERSION, file_sha256(path), property, repr(float(symprec)))
    return cache_dir / "symmetry" / f"{path.name.split('.')[0]}-{key[:16]}.json"


def _read_file(
    path: Path,
    property: str,
    report: LoadReport,
    *,
    check_symmetry: bool,
    symprec: float,
    symmetry_tolerance: float,
    cache_dir: Path,
) -> list[Record]:
    records: list[Record] = []
    line_of: dict[str, int] = {}
    seen: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line_no, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            report.n_read += 1
            record, skip = _parse_line(text, property, path.name, line_no, seen)
            if skip is not None:
                report.skipped.append(skip)
            else:
                records.append(record)
                line_of[record.material_id] = line_no
    if not check_symmetry:
        return records

    cache_path = _symmetry_cache_path(cache_dir, path, property, symprec)
    cached = read_json(cache_path) or {}
    residuals: dict[str, float] = {}
    failed: dict[str, str] = {}
    todo = [r for r in records if r.material_id not in cached]
    if todo:
        from tqdm.auto import tqdm

        for r in tqdm(todo, desc=f"symmetry check {path.name}", disable=len(todo) < 50):
            try:
                residuals[r.material_id] = structure_symmetry_residual(r.structure, r.tensor, property, symprec)
            except Exception as exc:  # spglib fails on some cells: skip this record, not the load
                failed[r.material_id] = f"point group undetermined: {type(exc).__name__}: {exc}"
        atomic_write_json(cache_path, {**cached, **residuals})  # failures are not cached
    residuals = {**cached, **residuals}

    kept = []
    for r in records:
        if r.material_id in failed:
            report.skipped.append(SkippedRecord(
                path.name, line_of[r.material_id], r.material_id, "symmetry", failed[r.material_id]))
            continue
        res = float(residuals[r.material_id])
        r.meta["sym_residual_check"] = res
        if res > symmetry_tolerance:
            report.skipped.append(
                SkippedRecord(
                    path.name, line_of[r.material_id], r.material_id, "symmetry",
                    f"residual {res:.3g} > tolerance {symmetry_tolerance}",
                )
            )
        else:
            kept.append(r)
    return kept


def load_records(
    property: str,
    sources: str | Sequence[str] = ("mp",),
    root: str | os.PathLike[str] | None = None,
    *,
    check_symmetry: bool = True,
    symprec: float = 0.01,
    symmetry_tolerance: float = 0.05,
    cache_dir: str | os.PathLike[str] | None = None,
) -> RecordList:
    """Load, validate and return the records of one property.

    Args:
        property: ``"dielectric"``, ``"piezoelectric"`` or ``"elastic"``.
        sources: ``"mp"`` (the ``*_mp2015``/``*_mp2017`` files), ``"matten"``, ``"abo3p4mm"``
            or ``"all"``; a string or a sequence of them.
        root: directory holding the files; default: the copies shipped in the package.
        check_symmetry: run the point-group consistency check (cached on disk).
        symprec: spglib tolerance in Angstrom for the point group.
        symmetry_tolerance: largest accepted relative residual (dimensionless).
        cache_dir: cache root (default ``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor``).

    Returns:
        A :class:`RecordList` (a ``list[Record]`` in file order, files sorted by name) whose
        ``.report`` is the :class:`LoadReport`. Skipped records are also logged as a warning.
    """
    property_rank(property)
    if symmetry_tolerance <= 0:
        raise ValueError(f"symmetry_tolerance must be > 0, got {symmetry_tolerance}")
    files = find_files(property, sources, root)
    report = LoadReport(property=property, files=[f.name for f in files])
    cache = resolve_cache_dir(cache_dir)
    records: list[Record] = []
    for path in files:
        records.extend(
            _read_file(
                path, property, report,
                check_symmetry=check_symmetry, symprec=symprec,
                symmetry_tolerance=symmetry_tolerance, cache_dir=cache,
            )
        )
    report.n_loaded = len(records)
    if report.skipped:
        logger.warning("skipped bad records: %s", report.summary())
    else:
        logger.info("%s", report.summary())
    return RecordList(records, report)


# Old names, for one release (a DeprecationWarning names the new one): ``check_property`` here returned
# the rank, unlike ``irreptensor_ml.metrics.check_property`` (the name); ``symmetry_residual`` is another
# number than ``irreptensor.symmetry_residual``.
check_property = renamed(property_rank, "check_property", "it returns the tensor rank")
symmetry_residual = renamed(structure_symmetry_residual, "symmetry_residual",
                            "not irreptensor.symmetry_residual: the worst operation, not the group average")
