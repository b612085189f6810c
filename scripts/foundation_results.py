#!/usr/bin/env python
"""Markdown summary of the foundation study as far as it has run, with SevenNet-0's reference row.

The study's own report (``irreptensor-ml transfer --preset foundation``) needs every planned run;
this script reports whatever is stored: for each target, strategy and fraction the test metrics
over the seeds present (mean ± std, n), a paired bootstrap interval of the difference to
``scratch`` in mean test Frobenius error on the seeds both have (the study's statistics,
:mod:`irreptensor_ml.transfer.stats`), and -- for elastic -- the finite-strain row of
``scripts/foundation_reference.py`` beside the strategies (same test materials, same metrics; paired
with each strategy at 100 % on the materials it has finished).  Runs are looked up in the study's
store and in its ``reuse_runs_from`` directories.  Example::

    python scripts/foundation_results.py --from-cache study_data.pt --out results/foundation/results.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = ("frobenius_mae", "K_VRH_mae", "G_VRH_mae", "ewt25")


def _cell(values: list[float]) -> str:
    from irreptensor_ml.transfer import stats as S

    ms = S.mean_std(values)
    if ms["mean"] is None:
        return "–"
    if ms["std"] is None:
        return f"{ms['mean']:.4g} (n=1)"
    return f"{ms['mean']:.4g} ± {ms['std']:.2g} (n={ms['n']})"


def _ci(a: dict, b: dict, boot: dict) -> str:
    """Paired bootstrap of ``a - b`` (``{seed: {material: error}}``)."""
    from irreptensor_ml.transfer import stats as S

    try:
        x, y, seeds, mats = S.align_errors(a, b)
    except ValueError:
        return "–"
    ci = S.paired_bootstrap(x, y, n_resamples=int(boot["n_resamples"]), confidence=float(boot["confidence"]),
                            seed=int(boot["seed"]))
    verdict = S.verdict(ci)
    short = "n.s." if verdict == "no significant difference" else verdict.split()[0]
    return f"{ci['diff']:+.3g} [{ci['low']:+.3g}, {ci['high']:+.3g}] {short} (seeds {seeds})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="foundation")
    parser.add_argument("--from-cache", default=None)
    parser.add_argument("--reference", type=Path, default=None,
                        help="finite-strain summary (default: the config's reference_rows.elastic)")
    parser.add_argument("--out", type=Path, default=Path("results/foundation/results.md"))
    args = parser.parse_args(argv)

    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.plan import candidates, make_spec, plan_trials
    from irreptensor_ml.transfer.store import RunStore, load_study_data

    cfg = load_study_config(args.preset)
    data = load_study_data(cfg, args.from_cache)
    stores = [RunStore(cfg["results_dir"])] + [RunStore(d) for d in cfg["reuse_runs_from"]]

    def find(run_id: str) -> tuple[dict | None, RunStore | None]:
        for store in stores:
            rec = store.load(run_id)
            if rec is not None:
                return rec, store
        return None, None

    trials = plan_trials(cfg, data, {})
    lines = [f"# Foundation study `{cfg['name']}`: stored results", "",
             f"Data fingerprint `{data.fingerprint[:12]}`; runs from {', '.join(str(s.root) for s in stores)}. "
             "Partial: only the runs stored so far are shown (n = seeds present); the study's own report "
             "(`irreptensor-ml transfer --preset foundation --report-only`) appears when every run is stored.",
             "", "SevenNet-0 was trained on MPtrj, which contains Materials Project structures of these test "
             "sets (energies, forces, stresses; not tensors): see docs/foundation.md.", ""]
    errors: dict[tuple[str, str, float], dict[int, dict[str, float]]] = {}
    tests: dict[tuple[str, str, float], list[dict]] = {}
    counts = []
    for target in cfg["targets"]:
        for strat in cfg["strategies"]:
            n_cand = len(candidates(cfg, strat))
            scores = []
            for k in range(n_cand):
                vals = [find(s.run_id)[0] for s in trials if (s.target, s.strategy, s.candidate) == (target, strat, k)]
                scores.append(None if not vals or any(v is None for v in vals) else
                              sum(float(v["val"]["frobenius_mae"]) for v in vals) / len(vals))
            chosen = None if any(s is None for s in scores) else min(range(n_cand), key=lambda k: scores[k])
            done = 0
            if chosen is not None:
                for f in cfg["fractions"]:
                    for seed in cfg["seeds"]:
                        spec = make_spec(cfg, data, {}, strat, target, float(f), int(seed), chosen)
                        rec, store = find(spec.run_id)
                        if rec is None or "test" not in rec:
                            continue
                        done += 1
                        tests.setdefault((target, strat, float(f)), []).append(rec["test"])
                        preds = store.load_predictions(spec.run_id)
                        errors.setdefault((target, strat, float(f)), {})[int(seed)] = dict(
                            zip(preds["sample_ids"], preds["frobenius_error"]))
            counts.append((target, strat, chosen, scores, done, len(cfg["fractions"]) * len(cfg["seeds"])))

    lines += ["## Status", "", "| target | strategy | tuning (val Frobenius MAE per candidate) | final runs stored |",
              "|---|---|---|---|"]
    for target, strat, chosen, scores, done, total in counts:
        sc = ", ".join("missing" if s is None else f"{s:.4g}" for s in scores)
        lines.append(f"| {target} | {strat} | {sc}" + ("" if chosen is None else f" → candidate {chosen}")
                     + f" | {done}/{total} |")

    ref_path = args.reference or Path(cfg["reference_rows"].get("elastic", "results/foundation/reference/summary.json"))
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else None
    boot = cfg["bootstrap"]
    for target in cfg["targets"]:
        unit = "GPa" if target == "elastic" else ("C/m²" if target == "piezoelectric" else "")
        fr = sorted(float(f) for f in cfg["fractions"])
        lines += ["", f"## {target}: test Frobenius MAE{f' ({unit})' if unit else ''}", "",
                  "| strategy | " + " | ".join(f"{100 * f:g} %" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
        for strat in cfg["strategies"]:
            cells = [_cell([t["frobenius_mae"] for t in tests.get((target, strat, f), [])]) for f in fr]
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        lines += ["", "Difference to scratch (paired bootstrap, 95 %; negative = better than scratch):", "",
                  "| strategy | " + " | ".join(f"{100 * f:g} %" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
        for strat in cfg["strategies"]:
            if strat == "scratch":
                continue
            cells = [_ci(errors.get((target, strat, f), {}), errors.get((target, "scratch", f), {}), boot)
                     if (target, strat, f) in errors and (target, "scratch", f) in errors else "–" for f in fr]
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        if target != "elastic":
            continue
        top = max(fr)
        lines += ["", f"### elastic at {100 * top:g} % of the training materials, beside SevenNet-0 itself", "",
                  "| row | n test | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
        for strat in cfg["strategies"]:
            t = tests.get(("elastic", strat, top), [])
            n = int(t[0]["n"]) if t else "–"
            lines.append(f"| {strat} | {n} | " + " | ".join(_cell([x.get(m) for x in t]) for m in METRICS) + " |")
        if reference is not None and reference.get("metrics"):
            m = reference["metrics"]
            lines.append(f"| SevenNet-0 finite strain (no training) | {reference['n_done']} of {reference['n_test']} | "
                         + " | ".join(f"{m[k]:.4g}" if m.get(k) is not None else "–" for k in METRICS) + " |")
            ref_err = {r["sample_id"]: r["frobenius_error_gpa"] for r in reference["per_material"]}
            lines += ["", f"Reference minus strategy in mean Frobenius error on the {len(ref_err)} materials the "
                      "reference has finished (paired bootstrap; negative = the potential itself is better):", ""]
            for strat in cfg["strategies"]:
                runs = errors.get(("elastic", strat, top), {})
                if not runs:
                    continue
                common = {s: {k: v for k, v in e.items() if k in ref_err} for s, e in runs.items()}
                ref = {s: {k: ref_err[k] for k in e} for s, e in common.items()}
                lines.append(f"- vs {strat}: {_ci(ref, common, boot)}")
            lines += ["", f"Reference settings: {json.dumps(reference['settings'])}; {reference['n_failed']} failed, "
                      f"{reference.get('n_not_converged', 0)} with a relaxation not converged; "
                      f"{reference['total_seconds']:.0f} s in total."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
