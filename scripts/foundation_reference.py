#!/usr/bin/env python
"""SevenNet-0's own elastic tensors of the study's elastic test materials, beside their DFT tensors.

The reference row of the foundation study: no learning at all, the pretrained potential itself.
For every elastic TEST material of the transfer study's union split (the same split and data as
the ``full`` and ``foundation`` presets, :meth:`~irreptensor_ml.transfer.studydata.StudyData.indices`):
relax cell and ions with SevenNet-0, strain the cell by +-0.5 % and +-1 % along each Voigt
component with the ions relaxed, fit the stiffness by least squares
(:func:`irreptensor_ml.foundation.finite_strain_elastic`), and compare with the DFT tensor through
the study's metrics (:func:`irreptensor_ml.metrics.tensor_metrics`: Frobenius MAE, K_VRH / G_VRH
MAE, EwT, ...).  The relaxation keeps the cell's orientation, so components are comparable.

Resumable: one JSON per material under ``<out>/materials/``; a rerun skips the finished ones
(``--retry-failed`` redoes failures).  Materials run smallest cell first.  ``<out>/summary.json``
holds the metrics over the finished materials (and how many are missing or failed) plus the
per-material rows; it is rewritten after every material.  Needs the ``foundation`` extra::

    nice -n 19 python scripts/foundation_reference.py --from-cache study_data.pt
    python scripts/foundation_reference.py --ids mp-149 --max-atoms 8      # a few materials
    python scripts/foundation_reference.py --summary-only                  # rebuild summary.json

Cost: 25 relaxations per crystal; ~2-40 s per material on 2 loaded CPU cores (more for cells of
~100 atoms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from irreptensor_ml.atomic import atomic_write_text

DEFAULT_OUT = Path("results/foundation/reference")
STRAINS = (-0.01, -0.005, 0.005, 0.01)
#: name of the reference row in reports
ROW_NAME = "sevennet-0 finite strain"


def file_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", sample_id) + ".json"


def graph_structure(graph: Any) -> Any:
    """pymatgen Structure of a study graph (species, Cartesian positions, lattice rows)."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice(graph.lattice.numpy()), graph.species.tolist(), graph.pos.numpy(),
        coords_are_cartesian=True,
    )


def test_materials(config: dict, from_cache: str | None) -> tuple[list[dict], str]:
    """Elastic test samples of the study split: ``[{"sample_id", "index", "structure",
    "dft" (3,3,3,3) GPa}]`` (smallest cells first) and the data fingerprint."""
    import irreptensor as it
    from irreptensor_ml.transfer.store import load_study_data

    data = load_study_data(config, from_cache)
    data.check_union_split()
    out = []
    for k in data.indices("test", "elastic"):
        out.append({
            "sample_id": data.sample_id(k, "elastic"),
            "material_key": data.material_keys[k],
            "index": k,
            "num_atoms": int(data.graphs[k].num_nodes),
            "graph": data.graphs[k],
            "dft": np.asarray(it.compose(data.targets[k]["elastic"].numpy(), "elastic")),
        })
    out.sort(key=lambda m: (m["num_atoms"], m["sample_id"]))
    return out, data.fingerprint


def compute_one(material: dict, calculator: Any, fmax: float) -> dict:
    import irreptensor as it
    from irreptensor_ml.foundation import finite_strain_elastic
    from irreptensor_ml.metrics import tensor_metrics

    structure = graph_structure(material["graph"])
    start = time.perf_counter()
    result = finite_strain_elastic(structure, calculator, strains=STRAINS, fmax=fmax)
    seconds = time.perf_counter() - start
    pred = result.tensor
    m = tensor_metrics(pred[None], material["dft"][None], "elastic")
    (k_pred, g_pred), (k_dft, g_dft) = _vrh(pred), _vrh(material["dft"])
    return {
        "sample_id": material["sample_id"],
        "material_key": material["material_key"],
        "formula": structure.composition.reduced_formula,
        "num_atoms": material["num_atoms"],
        "status": "ok",
        "seconds": round(seconds, 2),
        "converged": result.converged,
        "fit_rms_gpa": result.fit_rms,
        "asymmetry_gpa": result.asymmetry,
        "residual_stress_gpa": np.round(result.residual_stress, 4).tolist(),
        "volume_change": result.structure.volume / structure.volume - 1,
        "frobenius_error_gpa": m["frobenius_mae"],
        "k_vrh_gpa": {"sevennet": _f(k_pred), "dft": _f(k_dft)},
        "g_vrh_gpa": {"sevennet": _f(g_pred), "dft": _f(g_dft)},
        "pred_irreps": np.asarray(it.decompose(pred, "elastic")).tolist(),
        "true_irreps": np.asarray(it.decompose(material["dft"], "elastic")).tolist(),
        "voigt_gpa": {"sevennet": result.voigt.round(3).tolist(),
                      "dft": np.asarray(it.to_voigt(material["dft"], "elastic")).round(3).tolist()},
    }


def _vrh(C: np.ndarray) -> tuple[float, float]:
    from irreptensor_ml.metrics import vrh_moduli_table

    v = vrh_moduli_table(C[None])
    return float(v["K_VRH"][0]), float(v["G_VRH"][0])


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize(out: Path, materials: list[dict], fingerprint: str, settings: dict) -> dict:
    """Metrics over the finished materials (``tensor_metrics`` of the stacked tensors)."""
    import irreptensor as it
    from irreptensor_ml.metrics import tensor_metrics

    rows, failed, missing = [], [], []
    for m in materials:
        path = out / "materials" / file_name(m["sample_id"])
        if not path.is_file():
            missing.append(m["sample_id"])
            continue
        row = json.loads(path.read_text())
        (rows if row.get("status") == "ok" else failed).append(row)
    summary: dict[str, Any] = {
        "row": ROW_NAME,
        "property": "elastic",
        "split": "test",
        "data_fingerprint": fingerprint,
        "n_test": len(materials),
        "n_done": len(rows),
        "n_failed": len(failed),
        "n_missing": len(missing),
        "complete": not missing,
        "settings": settings,
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "metrics": None,
        "failed": [{"sample_id": r["sample_id"], "error": r.get("error")} for r in failed],
        "missing": missing,
        "per_material": [
            {k: r[k] for k in ("sample_id", "formula", "num_atoms", "seconds", "converged",
                               "frobenius_error_gpa", "k_vrh_gpa", "g_vrh_gpa", "fit_rms_gpa")}
            for r in rows
        ],
    }
    if rows:
        pred_i = np.array([r["pred_irreps"] for r in rows])
        true_i = np.array([r["true_irreps"] for r in rows])
        pred = np.asarray(it.compose(pred_i, "elastic"))
        true = np.asarray(it.compose(true_i, "elastic"))
        metrics = tensor_metrics(pred, true, "elastic", pred_irreps=pred_i, true_irreps=true_i)
        summary["metrics"] = {k: (float(v) if np.isfinite(v) else None) for k, v in metrics.items()}
        summary["n_not_converged"] = sum(not r["converged"] for r in rows)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="foundation", help="study preset whose data/split to use")
    parser.add_argument("--from-cache", default=None, help="exported study-data file (--export-cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--ids", nargs="*", help="only these sample ids / material keys (substring match)")
    parser.add_argument("--max-atoms", type=int, default=None, help="skip larger cells")
    parser.add_argument("--fmax", type=float, default=1e-3, help="relaxation force tolerance, eV/A")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--retry-failed", action="store_true", help="redo materials that failed")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild summary.json")
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from irreptensor_ml.transfer.presets import load_study_config

    torch.set_num_threads(args.threads)
    config = load_study_config(args.preset)
    materials, fingerprint = test_materials(config, args.from_cache)
    settings = {"model": "7net-0", "strains": list(STRAINS), "fmax_ev_per_a": args.fmax,
                "relax_cell": True, "relax_ions": True, "preset_data": args.preset,
                "machine": f"{platform.machine()} {os.cpu_count()} CPU cores", "torch_threads": args.threads}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "materials").mkdir(exist_ok=True)
    todo = materials
    if args.ids:
        todo = [m for m in todo if any(i in m["sample_id"] or i == m["material_key"] for i in args.ids)]
    if args.max_atoms is not None:
        todo = [m for m in todo if m["num_atoms"] <= args.max_atoms]

    def pending(m: dict) -> bool:
        path = args.out / "materials" / file_name(m["sample_id"])
        if not path.is_file():
            return True
        return args.retry_failed and json.loads(path.read_text()).get("status") != "ok"

    todo = [m for m in todo if pending(m)]
    if not args.summary_only and todo:
        from irreptensor_ml.foundation import sevennet_calculator

        calculator = sevennet_calculator()
        bar = tqdm(todo, desc="SevenNet-0 finite strain", unit="material")
        for m in bar:
            if not pending(m):  # finished meanwhile by another invocation (e.g. one with --ids)
                continue
            bar.set_postfix_str(f"{m['sample_id'].split(':')[-1]} ({m['num_atoms']} atoms)")
            try:
                row = compute_one(m, calculator, args.fmax)
            except Exception as exc:  # one bad material (unknown element, ...) must not stop the rest
                row = {"sample_id": m["sample_id"], "num_atoms": m["num_atoms"], "status": "failed",
                       "error": f"{type(exc).__name__}: {exc}"}
            path = args.out / "materials" / file_name(m["sample_id"])
            atomic_write_text(path, json.dumps(row, indent=1) + "\n")
            summarize(args.out, materials, fingerprint, settings)
    s = summarize(args.out, materials, fingerprint, settings)
    met = s["metrics"] or {}
    print(f"{s['n_done']}/{s['n_test']} done, {s['n_failed']} failed, {s['n_missing']} missing; "
          + ", ".join(f"{k} {met[k]:.3g}" for k in ("frobenius_mae", "K_VRH_mae", "G_VRH_mae", "ewt25")
                      if met.get(k) is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
