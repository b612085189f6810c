#!/usr/bin/env python
"""Export fresh crystal-tensor data from the Materials Project into irreptensor_ml's JSON Lines format.

Needs a Materials Project API key (https://next-gen.materialsproject.org/api) and the ``mp-api`` client
(``pip install mp-api``; it brings pymatgen). Examples::

    export MP_API_KEY=...                      # or pass --api-key
    python scripts/export_mp.py elastic --out my_data/elastic_mpfresh.jsonl.gz --limit 500
    python scripts/export_mp.py dielectric --out my_data/dielectric_mpfresh.jsonl.gz --material-ids mp-149 mp-2133
    python scripts/export_mp.py piezoelectric --out my_data/piezoelectric_mpfresh.jsonl.gz --chemsys Zn-O

Train on the result with ``data.data_root: my_data`` (and ``data.sources: [mp]``: file names
``<property>_mp*.jsonl.gz`` are the "mp" source), or read it with
``irreptensor_ml.data.load_records(property, sources="mp", root="my_data")``.

What it writes: one JSON object per line with ``material_id``, ``formula``, ``structure``
(``Structure.as_dict()``), ``tensor`` (the full Cartesian tensor **in that structure's frame**), ``voigt``
(the Materials Project matrix as given), ``source`` and ``meta`` -- the format documented in
``docs/data.md``. Units: elastic GPa, piezoelectric C/m^2 (stress-charge ``e``), dielectric dimensionless
(total = ionic + electronic; both parts are also stored).

Frames. The Materials Project stores the dielectric and piezoelectric tensors, and the ``ieee_format``
elastic tensor, in the IEEE-standard orientation of the crystal, not in the orientation of its structure;
the ``raw`` elastic tensor is in the orientation of the structure it was computed for
(``optimized_structure``). A tensor is useless for learning if it is not in the frame of the structure
stored beside it, so for every material the script tries, in order,

* elastic: ``elastic_tensor.raw`` with ``optimized_structure``; ``elastic_tensor.ieee_format`` with the
  summary structure rotated into the IEEE frame (pymatgen ``Tensor.get_ieee_rotation``); the same
  unrotated;
* dielectric / piezoelectric: ``total`` with the IEEE-rotated structure; the same with the unrotated one;

and keeps the first pair whose point-group residual ``max_g |g.T - T| / |T|`` (the check of
``irreptensor_ml.data.records``) is at most ``--symmetry-tolerance``; ``meta.tensor_frame`` says which.
Materials with no consistent pair are reported and left out. A rotated structure keeps its fractional
coordinates (only the lattice is rotated), so it is the same crystal.

Caveats: ``ieee_format`` elastic tensors are rounded to 1 GPa by the Materials Project; the symmetry test
cannot see frame errors that map the point group onto itself (see ``irreptensor_ml/datasets/README.md``);
the Materials Project data are CC BY 4.0 (cite the Materials Project and the method papers, see
``docs/data.md``).

Only ``main`` talks to the network; :func:`records_from_docs` and the helpers below are pure functions of
the downloaded documents (so they can be tested without an API key).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PROPERTIES = ("elastic", "dielectric", "piezoelectric")
#: mp-api rester attribute (under ``MPRester().materials``) of each property.
RESTERS = {"elastic": "elasticity", "dielectric": "dielectric", "piezoelectric": "piezoelectric"}
#: document fields requested from the property endpoint (the whole document if these are refused).
FIELDS = {
    "elastic": ["material_id", "formula_pretty", "elastic_tensor", "optimized_structure"],
    "dielectric": ["material_id", "formula_pretty", "total", "ionic", "electronic"],
    "piezoelectric": ["material_id", "formula_pretty", "total", "ionic", "electronic"],
}


def _get(doc: Any, *path: str) -> Any:
    """``doc.a.b`` or ``doc["a"]["b"]`` (mp-api returns pydantic models or dicts); None if absent."""
    node = doc
    for key in path:
        if node is None:
            return None
        node = node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)
    return node


def _structure(obj: Any) -> Any:
    """A pymatgen Structure from a Structure or its dict; None for None."""
    if obj is None:
        return None
    from pymatgen.core import Structure

    return obj if isinstance(obj, Structure) else Structure.from_dict(obj)


def ieee_structure(structure: Any) -> tuple[Any, np.ndarray]:
    """The structure rigidly rotated into pymatgen's IEEE frame, and the rotation ``R``.

    ``R`` is ``Tensor.get_ieee_rotation(structure)``: a tensor in the IEEE frame is
    ``T'_ij.. = R_ia R_jb .. T_ab..``; the lattice rows become ``a' = R a`` and the fractional
    coordinates are unchanged.
    """
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.tensors import Tensor

    R = np.asarray(Tensor.get_ieee_rotation(structure), dtype=np.float64)
    rotated = Structure(Lattice(structure.lattice.matrix @ R.T), structure.species, structure.frac_coords,
                        site_properties=structure.site_properties)
    return rotated, R


def cartesian_from_mp(matrix: Any, property: str) -> np.ndarray:
    """Full Cartesian tensor from the Materials Project matrix of ``property``.

    elastic: 6x6 Voigt ``C_IJ = C_ijkl`` (GPa); piezoelectric: 3x6 ``e_iJ = e_ijk`` (C/m^2, no factors);
    dielectric: the 3x3 matrix, symmetrized ``(eps + eps^T) / 2``.
    """
    import irreptensor as it

    m = np.asarray(matrix, dtype=np.float64)
    if property == "dielectric":
        if m.shape != (3, 3):
            raise ValueError(f"dielectric matrix must be 3x3, got {m.shape}")
        return (m + m.T) / 2
    if property == "elastic":
        m = (m + m.T) / 2  # the raw fit is not exactly symmetric
    return np.asarray(it.from_voigt(m, property), dtype=np.float64)


def _candidates(doc: Any, property: str, summary_structure: Any) -> Iterable[tuple[str, Any, Any]]:
    """``(frame label, Materials Project matrix, structure)`` pairs to try, in order of preference."""
    if property == "elastic":
        raw, opt = _get(doc, "elastic_tensor", "raw"), _structure(_get(doc, "optimized_structure"))
        if raw is not None and opt is not None:
            yield "raw/optimized_structure", raw, opt
        ieee = _get(doc, "elastic_tensor", "ieee_format")
        matrix = ieee if ieee is not None else raw
        label = "ieee_format" if ieee is not None else "raw"
    else:
        matrix, label = _get(doc, "total"), "total"
    if matrix is None or summary_structure is None:
        return
    yield f"{label}/ieee_rotated_structure", matrix, ieee_structure(summary_structure)[0]
    yield f"{label}/structure", matrix, summary_structure


def records_from_docs(
    docs: Sequence[Any],
    property: str,
    structures: Mapping[str, Any],
    *,
    symmetry_tolerance: float = 0.05,
    symprec: float = 0.01,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Turn downloaded property documents into records of the JSON Lines format.

    Args:
        docs: mp-api documents (pydantic models or dicts) of one property.
        property: ``"elastic"``, ``"dielectric"`` or ``"piezoelectric"``.
        structures: ``{material_id: Structure or dict}`` from the summary endpoint.
        symmetry_tolerance: largest accepted point-group residual of the (tensor, structure) pair.
        symprec: spglib tolerance (Angstrom) of the point group.

    Returns:
        ``(records, skipped)``; ``skipped`` lists ``(material_id, reason)``.
    """
    from irreptensor_ml.data.records import structure_symmetry_residual

    if property not in PROPERTIES:
        raise ValueError(f"unknown property {property!r}; expected one of {PROPERTIES}")
    records, skipped = [], []
    for doc in docs:
        mid = str(_get(doc, "material_id"))
        try:
            best = None
            for frame, matrix, structure in _candidates(doc, property, _structure(structures.get(mid))):
                tensor = cartesian_from_mp(matrix, property)
                if not np.all(np.isfinite(tensor)) or not np.any(tensor):
                    continue
                res = structure_symmetry_residual(structure, tensor, property, symprec)
                if best is None or res < best[0]:
                    best = (res, frame, matrix, structure, tensor)
                if res <= symmetry_tolerance:
                    break
        except Exception as exc:  # one malformed document must not stop the export
            skipped.append((mid, f"{type(exc).__name__}: {exc}"))
            continue
        if best is None:
            skipped.append((mid, "no tensor or no structure"))
            continue
        res, frame, matrix, structure, tensor = best
        if res > symmetry_tolerance:
            skipped.append((mid, f"no frame consistent with the structure (best residual {res:.3g})"))
            continue
        meta: dict[str, Any] = {"tensor_frame": frame, "sym_residual": float(res)}
        if property == "dielectric":
            for part in ("ionic", "electronic"):
                value = _get(doc, part)
                if value is not None:
                    meta[f"{part}_raw"] = np.asarray(value, dtype=float).tolist()
        record = {
            "material_id": mid,
            "formula": structure.composition.reduced_formula,
            "structure": structure.as_dict(),
            "tensor": tensor.tolist(),
            "voigt": np.asarray(matrix, dtype=float).tolist(),
            "source": "Materials Project API (mp-api), exported by scripts/export_mp.py",
            "meta": meta,
        }
        if property == "dielectric":
            parts = {p: meta.get(f"{p}_raw") for p in ("ionic", "electronic")}
            if parts["electronic"] is not None:
                e = np.asarray(parts["electronic"], dtype=float)
                record["tensor_electronic"] = ((e + e.T) / 2).tolist()
                record["tensor_ionic"] = (tensor - (e + e.T) / 2).tolist()
        records.append(record)
    return records, skipped


def write_jsonl_gz(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as gzip JSON Lines (one object per line); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the script."""
    p = argparse.ArgumentParser(
        prog="export_mp.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("property", choices=PROPERTIES, help="which tensor to export")
    p.add_argument("--out", required=True,
                   help="output file, named <property>_<source>.jsonl.gz, e.g. my_data/elastic_mpfresh.jsonl.gz")
    p.add_argument("--api-key", default=None, help="Materials Project API key (default: $MP_API_KEY)")
    p.add_argument("--material-ids", nargs="+", default=None, metavar="ID", help="only these materials")
    p.add_argument("--chemsys", default=None, help="only this chemical system, e.g. Zn-O")
    p.add_argument("--limit", type=int, default=None, help="keep at most this many documents")
    p.add_argument("--symmetry-tolerance", type=float, default=0.05,
                   help="largest accepted point-group residual of a (tensor, structure) pair (default 0.05)")
    p.add_argument("--symprec", type=float, default=0.01, help="spglib tolerance in Angstrom (default 0.01)")
    return p


def _search(rester: Any, fields: list[str], **criteria: Any) -> list[Any]:
    """``rester.search`` with the listed fields, or with all fields if the server refuses them."""
    criteria = {k: v for k, v in criteria.items() if v is not None}
    try:
        return list(rester.search(fields=fields, **criteria))
    except Exception as exc:  # mp-api raises MPRestError for fields the document model lacks
        print(f"field selection refused ({exc}); downloading whole documents", file=sys.stderr)
        return list(rester.search(**criteria))


def main(argv: Sequence[str] | None = None) -> int:
    """Download, convert, validate and write; returns the exit status."""
    args = build_parser().parse_args(argv)
    name = Path(args.out).name
    if not (name.startswith(f"{args.property}_") and name.endswith(".jsonl.gz")):
        print(f"export_mp.py: error: --out must be named {args.property}_<source>.jsonl.gz", file=sys.stderr)
        return 2
    key = args.api_key or os.environ.get("MP_API_KEY")
    if not key:
        print("export_mp.py: error: no API key (pass --api-key or set MP_API_KEY)", file=sys.stderr)
        return 2
    try:
        from mp_api.client import MPRester  # imported here: --help works without mp-api
    except ImportError:
        print("export_mp.py: error: the mp-api client is not installed (pip install mp-api)", file=sys.stderr)
        return 2

    with MPRester(key) as mpr:
        rester = getattr(mpr.materials, RESTERS[args.property])
        docs = _search(rester, FIELDS[args.property], material_ids=args.material_ids, chemsys=args.chemsys)
        if args.limit is not None:
            docs = docs[: args.limit]
        ids = [str(_get(d, "material_id")) for d in docs]
        print(f"{len(docs)} {args.property} documents; fetching their structures", file=sys.stderr)
        summaries = _search(mpr.materials.summary, ["material_id", "structure"], material_ids=ids) if ids else []
    structures = {str(_get(s, "material_id")): _get(s, "structure") for s in summaries}
    records, skipped = records_from_docs(docs, args.property, structures,
                                         symmetry_tolerance=args.symmetry_tolerance, symprec=args.symprec)
    path = write_jsonl_gz(records, args.out)
    print(f"wrote {len(records)} records to {path}; skipped {len(skipped)}", file=sys.stderr)
    for mid, reason in skipped:
        print(f"  skipped {mid}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
