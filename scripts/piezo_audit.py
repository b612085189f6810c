"""Piezoelectric label audit: do the label frames (the sign of a polar axis) limit what can be learned?

A piezoelectric tensor has odd parity: the inverted structure has the tensor ``-e``.  If a label's
polar axis points against its structure's (the data README: "the sign of a polar axis ... cannot be
verified" for the IEEE-rotated MP records), the pair (structure, e) is the correct label of the
inverted structure with the wrong sign, and no equivariant model can fit both.  The audit:

1. **Learnability of sign-free invariants against the full tensor.**  The same model is trained
   (3 seeds, ``configs/learn.yaml``, all sources, MP materials scored) with the full-tensor
   relative loss and with the sign-free relative loss ``min(||p - e||, ||p + e||) / ||e||``; both
   are scored with full-tensor and sign-free metrics (``||e||``, irrep-block norms, the largest
   longitudinal coefficient, ``sign_agreement``).  Sign-free metrics far better than the full
   tensor's, with ``sign_agreement`` near 0.5, say that the sign, not the magnitude or the shape,
   is what cannot be learned.
2. **Records against the consensus.**  With the full-tensor model, training records whose
   prediction points against the label (cosine < -0.5, ``||e|| >= 0.1``) are listed by source
   and frame (IEEE-rotated or not): a cluster there flags records whose sign disagrees with the
   rest of the data.

Writes ``<out>/summary.json`` and ``<out>/flagged.json``; runs are resumable (finished ones are
skipped).

    python scripts/piezo_audit.py --out results/audit/piezoelectric
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune import is_mp  # noqa: E402

BASE = "irreptensor_ml/configs/learn.yaml"
LOSSES = ("relative", "relative_sign_free")
FLAG_COSINE = -0.5


def run_one(loss: str, seed: int, out: Path) -> dict[str, Any]:
    """Train one model and score it on the MP validation and test materials."""
    import torch

    from irreptensor_ml.evaluate import compute_metrics, evaluate_run
    from irreptensor_ml.train import fit

    torch.set_num_threads(1)
    run_dir = out / f"{loss}-s{seed}"
    record_path = run_dir / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    overrides = ["data.properties=[piezoelectric]", f"seed={seed}", f"loss.type={loss}"]
    started = time.time()
    fit(BASE, run_dir / "run", overrides)
    record: dict[str, Any] = {"loss": loss, "seed": seed, "train_wall_s": round(time.time() - started, 1)}
    for split in ("train", "val", "test"):
        res = evaluate_run(run_dir / "run", split=split, out_dir=run_dir / f"eval_{split}", plots=False,
                           data_overrides={"progress": False})
        d = res.predictions["piezoelectric"]
        mp = d.subset([is_mp(m) for m in d.material_ids])
        record[split] = {k: float(v) for k, v in compute_metrics({"piezoelectric": mp})["piezoelectric"].items()}
        if split == "train":
            p, t = d.pred_irreps, d.true_irreps
            cos = (p * t).sum(1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), 1e-300)
            record["train_cosines"] = {m: float(c) for m, c, n in zip(d.material_ids, cos, np.linalg.norm(t, axis=1))
                                       if n >= 0.1}
    shutil.rmtree(run_dir / "run" / "checkpoints", ignore_errors=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def record_frames() -> dict[str, dict[str, Any]]:
    """``{material_id: {source_file, frame, point_group}}`` of the piezoelectric records."""
    from irreptensor_ml.data.records import load_records

    out = {}
    for r in load_records("piezoelectric", "all", check_symmetry=False):
        out[r.material_id] = {"source_file": r.source_file, "ieee_rotated": _ieee_rotated(r),
                              "point_group": str(r.meta.get("point_group", r.meta.get("space_group_label", "")))}
    return out


KEYS = ("frobenius_mae", "rel_frobenius", "ewt25", "norm_mae", "norm_spearman", "max_longitudinal_mae",
        "max_longitudinal_spearman", "frobenius_mae_sign_free", "sign_agreement")


def _ieee_rotated(record: Any) -> bool:
    """Whether the record's structure was rotated into the IEEE frame (``meta.tensor_frame``)."""
    return "ieee" in str(record.meta.get("tensor_frame", "")).lower()


def wurtzite_polarity(records: list[Any]) -> dict[str, Any]:
    """Sign of e_333 against the structure's polarity for the binary wurtzites (P6_3mc, 4 sites).

    The polarity is the sign of the z component of the cation -> anion bond most parallel to the
    c axis (cation: the lower electronegativity).  Physically e_33 has one sign for the whole family
    (ZnO, AlN, GaN, InN, CdS, ZnS, CdSe: all positive in the metal-polar convention), so a split of
    ``sign(e_333) * polarity`` inside it would say that labels point against their structures.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    rows = []
    for r in records:
        s = r.structure
        if len(s) != 4 or SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() != 186:
            continue
        species = sorted({site.specie for site in s}, key=lambda e: e.X)
        if len(species) != 2:
            continue
        cation, anion = species
        # the tetrahedron's bonds (within 1.2x the shortest), not the next anion along -c, which is as
        # parallel to c
        bonds = np.array([nb.coords - site.coords for site in s if site.specie == cation
                          for nb in s.get_neighbors(site, 4.0) if nb.specie == anion])
        lengths = np.linalg.norm(bonds, axis=1)
        cos = bonds[lengths <= 1.2 * lengths.min(), 2] / lengths[lengths <= 1.2 * lengths.min()]
        best = float(cos[np.argmax(np.abs(cos))])
        e333 = float(r.tensor[2, 2, 2])
        rows.append({"material_id": r.material_id, "formula": s.composition.reduced_formula,
                     "ieee_rotated": _ieee_rotated(r),
                     "polarity": int(np.sign(best)), "e333": round(e333, 4),
                     "agreement": int(np.sign(best) * np.sign(e333))})
    signs = [row["agreement"] for row in rows]
    return {"rule": "sign(e_333) * sign(z of the cation->anion bond along c), binary P6_3mc with 4 sites",
            "n": len(rows), "plus": signs.count(1), "minus": signs.count(-1), "records": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/audit/piezoelectric")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--polarity-only", action="store_true",
                    help="only the wurtzite polarity check (no training): <out>/wurtzite_polarity.json")
    args = ap.parse_args(argv)
    if args.polarity_only:
        from irreptensor_ml.data.records import load_records

        result = wurtzite_polarity(list(load_records("piezoelectric", "mp")))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "wurtzite_polarity.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wurtzites: {result['n']}, sign(e333)*polarity +1: {result['plus']}, -1: {result['minus']}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with cf.ProcessPoolExecutor(args.workers) as pool:
        futs = {(loss, s): pool.submit(run_one, loss, s, out) for loss in LOSSES for s in args.seeds}
        records = {k: f.result() for k, f in futs.items()}
    summary: dict[str, Any] = {"seeds": args.seeds, "scored_on": "MP materials", "losses": {}}
    for loss in LOSSES:
        recs = [records[(loss, s)] for s in args.seeds]
        summary["losses"][loss] = {
            split: {k: float(np.mean([r[split][k] for r in recs])) for k in KEYS} for split in ("train", "val", "test")
        }
    frames = record_frames()
    flagged: dict[str, dict[str, Any]] = {}
    for s in args.seeds:
        for uid, c in records[("relative", s)]["train_cosines"].items():
            mid = uid.split("+")[0]
            flagged.setdefault(mid, {"cosines": [], **frames.get(mid, {})})["cosines"].append(c)
    consistent_against = {m: v for m, v in flagged.items()
                          if len(v["cosines"]) == len(args.seeds) and max(v["cosines"]) < FLAG_COSINE}
    by_group: dict[str, list[int]] = {}
    for m, v in flagged.items():
        group = f"{v.get('source_file', '?')} ieee_rotated={v.get('ieee_rotated')}"
        tally = by_group.setdefault(group, [0, 0])
        tally[0] += 1
        tally[1] += m in consistent_against
    summary["flagged"] = {"rule": f"training cosine(pred, label) < {FLAG_COSINE} for every seed, ||e|| >= 0.1",
                          "by_source_and_frame": {g: {"n": n, "flagged": f} for g, (n, f) in sorted(by_group.items())}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "flagged.json").write_text(json.dumps(consistent_against, indent=1) + "\n")
    for loss, splits in summary["losses"].items():
        print(loss, {k: round(v, 3) for k, v in splits["test"].items()})
    print(json.dumps(summary["flagged"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
