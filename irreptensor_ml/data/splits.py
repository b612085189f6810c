"""Train/val/test split over the union of materials of all properties.

Two records describe the same *material* when

* they share a ``material_id`` (e.g. one ``mp-…`` id in the elastic and the dielectric file), or
* pymatgen's ``StructureMatcher`` (default tolerances) finds their structures equal — e.g. a
  MatTen elastic structure that is also in ``elastic_mp2015``.

Matching is only attempted between structures with the same reduced formula, so it stays cheap;
the resulting grouping is cached on disk keyed by the records' ids and structure contents. Each
group gets a *material key* (the lexicographically smallest material id in the group).

The side of a material depends only on ``(seed, material key)``: a SHA-256 of the two is mapped
to a number u in [0, 1) and compared with the cumulative fractions. So the split is deterministic
and independent of record order, and adding materials never moves an existing key to another
side (a material's key itself changes only if a new record with a smaller id joins its group).
Because the split is over the union, a material in any property's test set is in no property's
train or val set. :func:`universe_material_keys` groups over *every* file of the data directory,
so the key (and side) of a material does not depend on which properties a run loads; the data
module uses it.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Iterable, Mapping, Sequence


from irreptensor_ml.atomic import atomic_write_json
from irreptensor_ml.data.cache import (
    CACHE_VERSION,
    file_sha256,
    hash_parts,
    read_json,
    resolve_cache_dir,
    structure_hash,
)
from irreptensor_ml.data.records import PROPERTY_RANK, Record, find_files, load_records

logger = logging.getLogger(__name__)

SIDES: tuple[str, str, str] = ("train", "val", "test")


class _UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {x: x for x in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _all_records(records_by_property: Mapping[str, Sequence[Record]]) -> dict[str, Record]:
    by_uid: dict[str, Record] = {}
    for prop, records in records_by_property.items():
        for r in records:
            if r.property != prop:
                raise ValueError(
                    f"record {r.uid} has property {r.property!r} but is listed under {prop!r}"
                )
            by_uid[r.uid] = r
    return by_uid


def material_keys(
    records_by_property: Mapping[str, Sequence[Record]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict[str, str]:
    """Map every record uid (``"<source_file>:<material_id>"``) to its material key.

    Records sharing a material id, or whose structures ``StructureMatcher()`` finds equal
    (compared within the same reduced formula only), get the same key: the smallest material
    id of the group. The result is cached in ``<cache>/groups/``.
    """
    by_uid = _all_records(records_by_property)
    hashes = {uid: structure_hash(r.structure) for uid, r in by_uid.items()}
    cache_path = None
    if use_cache:
        digest = hash_parts(
            CACHE_VERSION, "StructureMatcher-defaults",
            *(f"{uid}={hashes[uid]}" for uid in sorted(by_uid)),
        )
        cache_path = resolve_cache_dir(cache_dir) / "groups" / f"groups-{digest[:20]}.json"
        cached = read_json(cache_path)
        if isinstance(cached, dict) and set(cached) == set(by_uid):
            return cached

    uf = _UnionFind(by_uid)
    first_uid_of_id: dict[str, str] = {}
    for uid in sorted(by_uid):
        mid = by_uid[uid].material_id
        if mid in first_uid_of_id:
            uf.union(first_uid_of_id[mid], uid)
        else:
            first_uid_of_id[mid] = uid

    # One structure per distinct content, grouped by reduced formula.
    by_formula: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for uid in sorted(by_uid):
        formula = by_uid[uid].structure.composition.reduced_formula
        by_formula[formula][hashes[uid]].append(uid)
    candidates = [groups for groups in by_formula.values() if len(groups) > 1]
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    from tqdm.auto import tqdm

    for groups in tqdm(candidates, desc="StructureMatcher", disable=not progress):
        for uids in groups.values():  # identical content -> same material
            for uid in uids[1:]:
                uf.union(uids[0], uid)
        reps = [by_uid[uids[0]].structure for uids in groups.values()]
        rep_uid = {id(by_uid[uids[0]].structure): uids[0] for uids in groups.values()}
        for matched in matcher.group_structures(reps):
            for s in matched[1:]:
                uf.union(rep_uid[id(matched[0])], rep_uid[id(s)])

    members: dict[str, list[str]] = defaultdict(list)
    for uid in by_uid:
        members[uf.find(uid)].append(uid)
    result: dict[str, str] = {}
    for uids in members.values():
        key = min(by_uid[u].material_id for u in uids)
        for u in uids:
            result[u] = key
    logger.info(
        "material grouping: %d records -> %d materials (%d groups with several material ids)",
        len(result), len(members),
        sum(len({by_uid[u].material_id for u in uids}) > 1 for uids in members.values()),
    )
    if cache_path is not None:
        atomic_write_json(cache_path, result)
    return result


def universe_material_keys(
    root: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """:func:`material_keys` over EVERY data file of every property in ``root``.

    Grouping over the whole universe (not just the properties/sources of one run) makes a
    material's key, hence its split side, the same in every run: a material in the test set of
    an elastic-only run is also in the test set of a multi-property run. Records are loaded
    without the symmetry check (it does not affect identity). Cached by the files' SHA-256.
    ``root`` defaults to the shipped data directory.
    """
    files = []
    for prop in PROPERTY_RANK:
        try:
            files.extend(find_files(prop, "all", root))
        except ValueError:  # this root has no file for this property
            continue
    if not files:
        raise ValueError(f"no data files found in {root!r}")
    digest = hash_parts(CACHE_VERSION, "universe", *(f"{f.name}={file_sha256(f)}" for f in files))
    cache_path = resolve_cache_dir(cache_dir) / "groups" / f"universe-{digest[:20]}.json"
    cached = read_json(cache_path)
    if isinstance(cached, dict):
        return cached
    by_prop = {}
    for prop in PROPERTY_RANK:
        if any(f.name.startswith(prop + "_") for f in files):
            by_prop[prop] = load_records(prop, "all", root, check_symmetry=False, cache_dir=cache_dir)
    keys = material_keys(by_prop, cache_dir=cache_dir, progress=progress)
    atomic_write_json(cache_path, keys)
    return keys


def side_of(material_key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """Split side of one material key: ``"train"``, ``"val"`` or ``"test"`` (hash-based)."""
    fr = check_fractions(fractions)
    u = int(hash_parts("split", str(seed), material_key)[:15], 16) / 16**15
    if u < fr[0]:
        return "train"
    if u < fr[0] + fr[1]:
        return "val"
    return "test"


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Return (train, val, test) as floats; ``ValueError`` unless >= 0 and summing to 1."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f < 0 or not math.isfinite(f) for f in fr) or abs(sum(fr) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    return fr  # type: ignore[return-value]


def subsample_keys(keys: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """Deterministic subset of ``keys`` of size ``round(fraction * n)`` (at least 1 if n > 0).

    Keys are ordered by a hash of ``(seed, key)``, so subsets for growing fractions are nested
    (what a learning curve needs) and independent of input order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    ordered = sorted(set(keys), key=lambda k: hash_parts("subsample", str(seed), k))
    if not ordered:
        return set()
    n = max(1, round(fraction * len(ordered)))
    return set(ordered[:n])
