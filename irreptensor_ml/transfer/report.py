"""Summary, Markdown table and plots of a transfer study.

:func:`summarize` gathers the stored final runs of the current plan into one JSON-ready dict:
per target, strategy and fraction the test metrics over seeds (mean ± std of every metric of
:func:`irreptensor_ml.metrics.tensor_metrics`), the paired bootstrap interval of the difference
in mean Frobenius error against ``scratch`` over the same test materials with its verdict, the
validation scores that chose the hyper-parameters and the best strategy per target on
validation, plus the elastic pretraining model's own test metrics, hardware and wall time.

Every target's table is printed beside the trivial baselines computed on the study's own test set
(:func:`trivial_baselines`) and, when the study config's ``baselines_dir`` holds the file of the
target's property (``benchmarks/baselines.py`` output, e.g. ``results/baselines/dielectric.json``),
beside the baselines read from it -- the random forests (isotropic dielectric tensor from
composition and structure descriptors; the piezoelectric norm) -- with the test materials they were
scored on (:func:`external_baselines`; read, never recomputed). A part target
(``dielectric_electronic``) is reported from its property's runs, with the metrics of that part
(the refractive-index MAE included).

:func:`write_report` writes ``summary.json``, ``results.md`` (:func:`markdown_report`),
``learning_curve_<target>.png`` (test Frobenius MAE vs training fraction, mean ± std over seeds,
one line per strategy) and parity plots of the best model per property
(``parity_<property>.png``, via :func:`irreptensor_ml.plots.plot_parity`). Plots use matplotlib's
Agg backend and are skipped with a warning if matplotlib is missing.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from irreptensor_ml.transfer import stats as S
from irreptensor_ml.transfer.registry import target_property

logger = logging.getLogger(__name__)

__all__ = ["summarize", "markdown_report", "write_report", "format_cell", "trivial_baselines", "external_baselines"]

#: metrics shown with their own row in the Markdown "all metrics" tables (others are in the JSON)
MAIN_METRICS: tuple[str, ...] = ("frobenius_mae", "mae", "rel_frobenius", "ewt25", "ewt10", "ewt5")


def _fkey(f: float) -> str:
    return f"{float(f):g}"


def _fraction_label(f: float) -> str:
    return f"{100 * float(f):g} %"


def trivial_baselines(data: Any, prop: str) -> dict[str, dict[str, float]]:
    """Test metrics of two predictors that learn nothing from structures, as a floor to beat.

    ``zero``: the zero tensor. ``isotropic_median``: the isotropic tensor whose invariant (0e)
    coefficients are the medians over the property's training samples and whose other irreps are
    zero -- the best constant an equivariant model can output (a property without 0e
    coefficients, e.g. piezoelectric, gets only ``zero``). Same metrics and test samples as the
    study's runs (:func:`irreptensor_ml.metrics.tensor_metrics`). ``prop`` may be a part target
    (``dielectric_electronic``: that part's tensors and metrics, refractive-index MAE included).
    """
    import irreptensor as it
    from irreptensor_ml.metrics import irrep_blocks, refractive_index_metrics, tensor_metrics

    kind, part = target_property(prop)

    def targets(side: str) -> np.ndarray:
        return data.dataset(data.indices(side, prop), [prop]).targets(prop).numpy()

    true = targets("test")
    invariant = [sl for name, sl in irrep_blocks(data.irreps[kind]) if name.startswith("0e")]
    preds = {"zero": np.zeros_like(true)}
    if invariant:
        train = targets("train")
        const = np.zeros(true.shape[1])
        for sl in invariant:
            const[sl] = np.median(train[:, sl], axis=0)
        preds["isotropic_median"] = np.broadcast_to(const, true.shape).copy()
    true_t = it.compose(true, kind)
    out = {}
    for name, pred in preds.items():
        pred_t = it.compose(pred, kind)
        m = tensor_metrics(pred_t, true_t, kind, pred_irreps=pred, true_irreps=true, part=part)
        if prop == "dielectric_electronic":
            m.update(refractive_index_metrics(pred_t, true_t))
        # e.g. the VRH moduli of the (singular) zero stiffness are undefined
        out[name] = {k: (float(v) if math.isfinite(v) else None) for k, v in m.items()}
    return out


def external_baselines(config: Mapping[str, Any], targets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Baselines read from ``<baselines_dir>/<property>.json`` (``benchmarks/baselines.py``) for
    each target whose file is present: ``{target: {"file", "split", "materials", "n", "rows":
    {baseline name: metrics of that target}}}`` (a part target reads its part's entries; NaN
    values become ``None``). Nothing is recomputed; a missing directory or file is skipped, an
    unreadable one logged."""
    bdir = config.get("baselines_dir")
    out: dict[str, dict[str, Any]] = {}
    if not bdir:
        return out
    for target in targets:
        path = Path(bdir) / f"{target_property(target)[0]}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("baselines file %s is not readable; left out of the report", path)
            continue
        # the files hold NaN where a metric is undefined (strict JSON, and this summary, use null)
        rows = {name: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in b[target].items()}
                for name, b in (data.get("baselines") or {}).items()
                if isinstance(b, Mapping) and isinstance(b.get(target), Mapping)}
        if rows:
            out[target] = {"file": str(path), "split": data.get("split"), "materials": data.get("materials"),
                           "n": data.get("n"), "rows": rows}
    return out


def _target_record(rec: Mapping[str, Any], target: str, preds: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any], Mapping[str, Any] | None]:
    """``(val metrics, test metrics, test predictions)`` of a study target in a run record (a part
    target: its part's entries)."""
    if target_property(target)[1] is None:
        return dict(rec.get("val") or {}), dict(rec.get("test") or {}), preds
    if target not in (rec.get("test_parts") or {}):
        raise ValueError(f"final run {rec.get('run_id')} has no stored test metrics of {target}")
    part_preds = None if preds is None else (preds.get("parts") or {}).get(target)
    return dict((rec.get("val_parts") or {}).get(target) or {}), dict(rec["test_parts"][target]), part_preds


def summarize(
    config: Mapping[str, Any],
    data: Any,
    store: Any,
    pretrain_specs: Sequence[Any],
    final_specs: Sequence[Any],
    selection: Mapping[str, Any],
    *,
    session_elapsed_s: float | None = None,
) -> dict[str, Any]:
    """JSON-ready summary of the finished study (see the module doc).

    Raises ``ValueError`` if a final run lacks its stored test metrics.
    """
    from irreptensor_ml.metrics import TENSOR_UNITS
    from irreptensor_ml.train.provenance import hardware_info, package_versions

    boot = config["bootstrap"]
    run_seconds = 0.0
    devices: set[str] = set()
    sources: set[str] = set()
    spans: list[tuple[float, float]] = []

    def record(spec: Any) -> dict[str, Any]:
        nonlocal run_seconds
        rec = store.load(spec.run_id)
        if rec is None or "test" not in rec:
            raise ValueError(f"final run {spec.run_id} has no stored test metrics")
        run_seconds += float(rec.get("wall_time_s") or 0.0)
        devices.add(str(rec.get("device")))
        sources.add(str(rec.get("source") or "not recorded"))
        try:
            end = calendar.timegm(time.strptime(rec["finished"], "%Y-%m-%dT%H:%M:%SZ"))
            spans.append((end - float(rec.get("wall_time_s") or 0.0), end))
        except (KeyError, ValueError, TypeError):
            pass
        return rec

    pretrain = []
    for spec in pretrain_specs:
        rec = record(spec)
        pretrain.append({"run_id": spec.run_id, "seed": spec.seed, "val": rec["val"], "test": rec["test"],
                         "train": rec["train"], "wall_time_s": rec.get("wall_time_s")})
    results: dict[str, Any] = {}
    errors: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    counted: set[str] = set()
    for spec in final_specs:
        target = getattr(spec, "study_target", spec.target)
        if spec.run_id in counted:  # a run shared by a property and its part: its time counts once
            rec = store.load(spec.run_id)
            if rec is None or "test" not in rec:
                raise ValueError(f"final run {spec.run_id} has no stored test metrics")
        else:
            rec = record(spec)
            counted.add(spec.run_id)
        val, test, preds = _target_record(rec, target, store.load_predictions(spec.run_id))
        if preds is None:
            raise ValueError(f"no test predictions of {target} stored for run {spec.run_id}")
        cell = (
            results.setdefault(target, {}).setdefault(spec.strategy, {})
            .setdefault(_fkey(spec.fraction), {"runs": []})
        )
        cell["runs"].append({
            "run_id": spec.run_id, "seed": spec.seed, "val": val, "test": test,
            "epochs_run": rec["train"]["epochs_run"], "best_epoch": rec["train"]["best_epoch"],
            "n_train_target": rec["train"]["n_train_target"], "wall_time_s": rec.get("wall_time_s"),
        })
        errors[(target, spec.strategy, _fkey(spec.fraction))] = {
            **errors.get((target, spec.strategy, _fkey(spec.fraction)), {}),
            spec.seed: dict(zip(preds["sample_ids"], preds["frobenius_error"])),
        }
    best_on_val: dict[str, Any] = {}
    best_parts: dict[str, Any] = {}
    for target, by_strat in results.items():
        for strat, by_frac in by_strat.items():
            for fk, cell in by_frac.items():
                runs = cell["runs"]
                names = sorted({k for r in runs for k in r["test"]})
                cell["test"] = {k: S.mean_std([r["test"].get(k) for r in runs]) for k in names}
                cell["val_frobenius_mae"] = S.mean_std([r["val"].get("frobenius_mae") for r in runs])
                cell["n_train_target"] = S.mean_std([r["n_train_target"] for r in runs])
                for ref, key in (("scratch", "vs_scratch"), ("control", "vs_control")):
                    if strat in ("scratch", ref) or ref not in by_strat or fk not in by_strat[ref]:
                        continue
                    a, b, seeds, mats = S.align_errors(errors[(target, strat, fk)], errors[(target, ref, fk)])
                    ci = S.paired_bootstrap(a, b, n_resamples=int(boot["n_resamples"]),
                                            confidence=float(boot["confidence"]), seed=int(boot["seed"]))
                    ci["verdict"] = S.verdict(ci)
                    ci["seeds"] = seeds
                    cell[key] = ci
        top = _fkey(max(config["fractions"]))
        scores = {
            s: by_frac[top]["val_frobenius_mae"]["mean"]
            for s, by_frac in by_strat.items() if top in by_frac and by_frac[top]["val_frobenius_mae"]["mean"] is not None
        }
        if scores:
            best = min(scores, key=scores.get)
            # a part target's model is its property's model: listed apart (the shipped models
            # are per property, irreptensor_ml.transfer.ship)
            dest = best_on_val if target_property(target)[1] is None else best_parts
            dest[target] = {"strategy": best, "fraction": float(top), "val_frobenius_mae": scores}
    pre_prop = config["pretrain"]["property"]
    if pretrain:
        best_pre = min(pretrain, key=lambda r: r["val"].get("frobenius_mae") or math.inf)
        best_on_val[pre_prop] = {"strategy": "pretrain", "fraction": 1.0, "run_id": best_pre["run_id"]}
    names = sorted({k for r in pretrain for k in r["test"]})
    return {
        "name": config["name"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": json.loads(json.dumps(config, default=str)),
        "data": {
            "fingerprint": data.fingerprint,
            "counts": data.counts(),
            "data_config": data.data_config,
            "hashes": data.provenance.get("data_hashes", {}),
        },
        "units": dict(TENSOR_UNITS),
        "pretrain": {
            "property": pre_prop,
            "runs": pretrain,
            "test": {k: S.mean_std([r["test"].get(k) for r in pretrain]) for k in names},
        },
        "results": results,
        "selection": selection,
        "best_on_validation": best_on_val,
        "best_on_validation_parts": best_parts,
        "baselines": {p: trivial_baselines(data, p) for p in dict.fromkeys([pre_prop, *results])
                      if pretrain or p in results},
        "external_baselines": external_baselines(
            config, [p for p in dict.fromkeys([pre_prop, *results]) if pretrain or p in results]),
        "reference_rows": _reference_rows(config),
        "hardware": hardware_info(),
        "run_devices": sorted(devices),
        "run_sources": sorted(sources),
        "versions": package_versions(),
        "wall_time": {
            "sum_of_run_times_s": round(run_seconds, 1),
            "first_run_start_to_last_run_end_s": (
                round(max(e for _, e in spans) - min(b for b, _ in spans), 1) if spans else None
            ),
            "this_session_elapsed_s": None if session_elapsed_s is None else round(session_elapsed_s, 1),
        },
    }


def format_cell(ms: Mapping[str, Any] | None, digits: int = 4) -> str:
    """``"mean ± std"`` (``"mean (n=1)"`` for one seed, ``"–"`` if missing)."""
    if not ms or ms.get("mean") is None:
        return "–"
    if ms.get("std") is None:
        return f"{ms['mean']:.{digits}g} (n={ms['n']})"
    return f"{ms['mean']:.{digits}g} ± {ms['std']:.{digits - 1}g}"


def _ci_cell(ci: Mapping[str, Any] | None) -> str:
    if not ci:
        return "–"
    word = {"better": "**better**", "worse": "**worse**"}.get(ci["verdict"], "n.s.")
    return f"{ci['diff']:+.3g} [{ci['low']:+.3g}, {ci['high']:+.3g}] {word}"


def _chained(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``{strategy: strategy its runs start from}`` (``strategy_settings`` key ``start_from``)."""
    settings = cfg.get("strategy_settings") or {}
    return {s: settings[s]["start_from"] for s in cfg["strategies"] if (settings.get(s) or {}).get("start_from")}


def _question(summary: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """The report's question line: which pretrained trunks the study's strategies reuse."""
    targets = ", ".join(cfg["targets"])
    strategies = list(cfg["strategies"])
    trunks = []
    if any(s in strategies for s in ("frozen", "finetune", "multitask")):
        trunks.append(f"a trunk pretrained on **{summary['pretrain']['property']}** tensors")
    if any(s.startswith("foundation-") for s in strategies):
        name = (cfg.get("foundation") or {}).get("trunk", {}).get("foundation", "the foundation model")
        trunks.append(f"the pretrained layers of the interatomic potential **{name}**")
    if not trunks:
        return f"- Question: how well do the strategies {strategies} learn {targets}?"
    return (f"- Question: does reusing {' or '.join(trunks)} help learn {targets}, compared with training "
            "from scratch, and which way of reusing it works best?")


def markdown_report(summary: Mapping[str, Any], image_prefix: str = "") -> str:
    """The study as Markdown: setup, elastic metrics, per-target tables, plain-words verdicts and
    links to the figures (``image_prefix`` + file name, e.g. a path relative to the Markdown file)."""
    cfg = summary["config"]
    hw = summary["hardware"]
    fractions = sorted(float(f) for f in cfg["fractions"])
    seeds = cfg["seeds"]
    units = summary["units"]
    gpus = ", ".join(d["name"] for d in hw.get("cuda_devices") or []) or "none"
    wall = summary["wall_time"]
    lines = [
        f"# Transfer learning study `{summary['name']}`",
        "",
        _question(summary, cfg),
        f"- Seeds per point: **{len(seeds)}** {seeds}"
        + (" (ONE seed: no spread over seeds, treat differences with care)" if len(seeds) == 1 else "")
        + f"; fractions of each target's training materials: {', '.join(_fraction_label(f) for f in fractions)}.",
        "- Hyper-parameters: "
        + ("tuned on validation with the same number of candidates per strategy "
           f"(at {_fraction_label(cfg['tuning']['fraction'])}, seeds {cfg['tuning']['seeds']})"
           if any(len(v.get("overrides", [])) > 1 for t in summary["selection"].values() for v in t.values())
           else "fixed (no tuning; identical settings for every strategy except the finetune trunk "
           "learning-rate scale)")
        + "".join(f"; `{strat}` has one candidate and is not tuned: each run continues the chosen `{src}` run "
                  "of its target, fraction and seed" for strat, src in _chained(cfg).items())
        + "; test set evaluated once per final model.",
        f"- Split: one union split over all materials of all properties (split seed "
        f"{summary['data']['data_config'].get('split_seed')}): no test material of any property is in any "
        "training or validation set, pretraining included.",
        "- Data (samples train/val/test): "
        + ", ".join(f"{p} {c['train']}/{c['val']}/{c['test']}" for p, c in summary["data"]["counts"].items())
        + f"; data fingerprint "
        f"`{summary['data']['fingerprint'][:12]}`; code (git revision of the runs): "
        + ", ".join(f"`{r[:12]}{'+dirty' if r.endswith('+dirty') else ''}`" if r != "not recorded" else r
                    for r in summary.get("run_sources") or ["not recorded"]) + ".",
        f"- Runs executed on {', '.join(summary['run_devices'])}; report written on {hw.get('cpu_count')} CPU "
        f"cores ({hw.get('platform')}), GPU: {gpus}, "
        + (f"on the Dask scheduler `{cfg['scheduler_address']}`" if cfg.get("scheduler_address")
           else f"with `workers: {cfg['workers']}`")
        + f". Wall time: "
        f"{wall['first_run_start_to_last_run_end_s']} s from the first run's start to the last run's end "
        f"(includes pauses if the study was resumed); sum of the runs' own times {wall['sum_of_run_times_s']:.0f} s "
        "(training + validation, data preparation and test passes not included).",
        *(f"- {note}" for note in cfg.get("notes") or ()),
        "",
    ]
    if summary["pretrain"]["runs"]:
        lines += [f"## {summary['pretrain']['property']} pretraining model (test set)", "",
                  "| metric | value |", "|---|---|"]
        pre_test = summary["pretrain"]["test"]
        for k in MAIN_METRICS + tuple(k for k in pre_test if k.endswith("_mae") and k not in MAIN_METRICS):
            if k in pre_test:
                lines.append(f"| {k} | {format_cell(pre_test[k])} |")
        lines += _baseline_lines(summary, summary["pretrain"]["property"])
    for target, by_strat in summary["results"].items():
        unit = units.get(target_property(target)[0]) or "dimensionless"
        header = "| strategy | " + " | ".join(_fraction_label(f) for f in fractions) + " |"
        sep = "|---|" + "---|" * len(fractions)
        title = f"## {target}"
        if target == "dielectric_electronic":
            title += " (electronic part of the dielectric tensor; n = sqrt(mean eigenvalue) is the refractive index)"
        elif target_property(target)[1] is not None:
            title += f" ({target_property(target)[1]} part of the {target_property(target)[0]} tensor)"
        lines += ["", title, "",
                  f"Test Frobenius MAE ({unit}), mean ± std over seeds (lower is better), beside the baselines "
                  "(*italics*: predictors that learn nothing from the structure, or a random forest on simple "
                  "descriptors; a useful model must beat them):", "", header, sep]
        for strat, by_frac in by_strat.items():
            cells = [format_cell((by_frac.get(_fkey(f)) or {}).get("test", {}).get("frobenius_mae")) for f in fractions]
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        for label, metrics in _baseline_table(summary, target):
            v = metrics.get("frobenius_mae")
            lines.append(f"| *{label}* | " + " | ".join(["–" if v is None else f"{v:.4g}"] * len(fractions)) + " |")
        lines += _baseline_lines(summary, target)
        lines += ["", f"Difference to scratch in mean test Frobenius error ({unit}), paired bootstrap "
                  f"{100 * float(cfg['bootstrap']['confidence']):g} % interval over the same test materials "
                  "(negative = better than scratch; n.s. = interval contains 0):", "", header, sep]
        for strat, by_frac in by_strat.items():
            if strat == "scratch":
                continue
            cells = [_ci_cell((by_frac.get(_fkey(f)) or {}).get("vs_scratch")) for f in fractions]
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        vs_control = [strat for strat, by_frac in by_strat.items()
                      if any("vs_control" in (c or {}) for c in by_frac.values())]
        if vs_control:
            lines += ["", "Difference to control (a random frozen trunk with a trained head: what a head alone can "
                      "do) in mean test Frobenius error, same interval (negative = better than the control):", "",
                      header, sep]
            for strat in vs_control:
                cells = [_ci_cell((by_strat[strat].get(_fkey(f)) or {}).get("vs_control")) for f in fractions]
                lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        lines += ["", "In words:"]
        for strat, by_frac in by_strat.items():
            if strat == "scratch":
                continue
            groups: dict[str, list[str]] = {}
            for f in fractions:
                ci = (by_frac.get(_fkey(f)) or {}).get("vs_scratch")
                if ci:
                    groups.setdefault(ci["verdict"], []).append(_fraction_label(f))
            text = "; ".join(f"{v} than scratch at {', '.join(fs)}" if v != "no significant difference"
                             else f"no significant difference at {', '.join(fs)}" for v, fs in groups.items())
            lines.append(f"- {strat}: {text or 'no comparison'}{_control_words(by_frac, fractions)}.")
        top = _fkey(max(fractions))
        best = summary["best_on_validation"].get(target) or (summary.get("best_on_validation_parts") or {}).get(target)
        if best:
            lines.append(f"- Best strategy on validation at {_fraction_label(float(top))}: **{best['strategy']}**.")
        lines += _baseline_words(summary, target, by_strat, top)
        ref = (summary.get("reference_rows") or {}).get(target)
        ref_head = []
        if ref:
            done = "" if ref.get("complete") else f", {ref.get('n_done')} of {ref.get('n_test')} materials"
            ref_head = [f"{ref.get('row')} (no training{done})"]
        base_cols = _baseline_table(summary, target)
        lines += ["", f"All test metrics at {_fraction_label(float(top))} (mean ± std over seeds; baselines in "
                  "*italics*):", "",
                  "| metric | " + " | ".join([*by_strat, *ref_head, *(f"*{b}*" for b, _ in base_cols)]) + " |",
                  "|---|" + "---|" * (len(by_strat) + len(ref_head) + len(base_cols))]
        names: list[str] = []
        for by_frac in by_strat.values():
            for k in (by_frac.get(top) or {}).get("test", {}):
                if k not in names and k != "n":
                    names.append(k)
        for k in names:
            cells = [format_cell((by_frac.get(top) or {}).get("test", {}).get(k)) for by_frac in by_strat.values()]
            if ref:
                v = (ref.get("metrics") or {}).get(k)
                cells.append("–" if v is None else f"{v:.4g}")
            for _, metrics in base_cols:
                v = metrics.get(k)
                cells.append("–" if v is None else f"{v:.4g}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""]
    for target in summary["results"]:
        lines.append(f"![{target} learning curve]({image_prefix}learning_curve_{target}.png)")
    for prop, best in _best_models(summary).items():
        lines.append(f"![{prop} parity plot, {best['strategy']}]({image_prefix}parity_{prop}.png)")
    lines += ["", "Metric definitions: `irreptensor_ml/metrics.py` (Frobenius MAE over full Cartesian tensors; "
              "EwT = share of materials with relative Frobenius error below the threshold)."]
    return "\n".join(lines) + "\n"


def _reference_rows(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{property: summary}`` of the ``reference_rows`` files that exist (rows computed outside
    the study on the same test materials, e.g. ``scripts/foundation_reference.py``)."""
    out = {}
    for prop, path in (config.get("reference_rows") or {}).items():
        try:
            ref = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            logger.warning("reference row %s of %s not readable; left out of the report", path, prop)
            continue
        out[prop] = {k: ref.get(k) for k in ("row", "metrics", "n_test", "n_done", "complete", "settings")}
    return out


_BASELINE_LABELS = {"zero": "the zero tensor", "isotropic_median": "the isotropic training median"}
_TABLE_LABELS = {"zero": "zero tensor", "isotropic_median": "isotropic training median"}
#: baselines of a ``baselines_dir`` file shown beside the study's rows (the others stay in the JSON)
_FILE_BASELINES = {"isotropic_forest": "random forest, isotropic", "norm_forest": "random forest, norm only"}


def _best_models(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Best model on validation per property and per part target (older summaries: properties)."""
    return {**summary["best_on_validation"], **(summary.get("best_on_validation_parts") or {})}


def _file_rows(summary: Mapping[str, Any], target: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``[(name, label, metrics)]`` of the random-forest baselines read for ``target``."""
    ext = (summary.get("external_baselines") or {}).get(target) or {}
    where = f"{ext.get('materials')} {ext.get('split')} materials, n = {ext.get('n')}"
    return [(name, f"{label} ({where})", dict(ext["rows"][name]))
            for name, label in _FILE_BASELINES.items() if name in (ext.get("rows") or {})]


def _baseline_table(summary: Mapping[str, Any], target: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(label, metrics)]`` of the baselines printed as rows (columns) beside the strategies: the
    trivial ones on the study's test set, then the random forests read from ``baselines_dir``."""
    rows = [(f"{_TABLE_LABELS.get(name, name)} (baseline)", dict(m))
            for name, m in ((summary.get("baselines") or {}).get(target) or {}).items()]
    rows += [(label, m) for name, label, m in _file_rows(summary, target) if m.get("frobenius_mae") is not None]
    return rows


def _baseline_lines(summary: Mapping[str, Any], prop: str) -> list[str]:
    """One sentence with the trivial baselines of ``prop`` (older summaries have none) and one
    with the baselines read from the ``baselines_dir`` file, naming their test materials."""
    base = (summary.get("baselines") or {}).get(prop)
    out: list[str] = []
    if base:
        parts = [f"{_BASELINE_LABELS.get(name, name)}: Frobenius MAE {m['frobenius_mae']:.4g}, "
                 f"EwT25 {100 * m['ewt25']:.0f} %" for name, m in base.items()]
        out += ["", f"Trivial baselines on the same test set (predictors that ignore the structure; "
                f"a useful model must beat them): {'; '.join(parts)}."]
    ext = (summary.get("external_baselines") or {}).get(prop)
    rows = _file_rows(summary, prop)
    if ext and rows:
        n_study = None
        for by_frac in ((summary.get("results") or {}).get(prop) or {}).values():
            for cell in by_frac.values():
                n_study = n_study or (cell.get("test", {}).get("n") or {}).get("mean")
        texts = []
        for name, label, m in rows:
            shown = [f"{k} {m[k]:.4g}" for k in ("frobenius_mae", "ewt25", "refractive_index_mae", "norm_mae",
                                                   "norm_spearman", "mean_eigenvalue_spearman") if m.get(k) is not None]
            texts.append(f"{label.split(' (')[0]}: {', '.join(shown)}")
        same = "" if n_study is None or ext.get("n") is None or int(n_study) == int(ext["n"]) else (
            f" -- not this study's test set of {int(n_study)} materials, so the comparison is not paired")
        out += ["", f"Baselines of `benchmarks/baselines.py` read from `{ext['file']}` (scored on the "
                f"{ext.get('materials')} materials of the {ext.get('split')} split, n = {ext.get('n')}{same}): "
                f"{'; '.join(texts)}."]
    return out


def _control_words(by_frac: Mapping[str, Any], fractions: Sequence[float]) -> str:
    """Where a strategy beats scratch: whether it also beats the control (a random frozen trunk
    with a trained head), i.e. whether the head alone explains the gain."""
    better = [f for f in fractions if ((by_frac.get(_fkey(f)) or {}).get("vs_scratch") or {}).get("verdict") == "better"]
    words = []
    for f in better:
        ci = (by_frac.get(_fkey(f)) or {}).get("vs_control")
        if not ci:
            continue
        words.append(f"at {_fraction_label(f)} it is {ci['verdict']} than the control" if ci["verdict"] != (
            "no significant difference") else f"at {_fraction_label(f)} it does not differ from the control "
            "(a random frozen trunk does as well: the gain is not the pretraining's)")
    return f" ({'; '.join(words)})" if words else ""


def _baseline_words(summary: Mapping[str, Any], target: str, by_strat: Mapping[str, Any], top: str) -> list[str]:
    """One line: the best mean test Frobenius MAE at the largest fraction against every baseline."""
    means = {s: ((bf.get(top) or {}).get("test", {}).get("frobenius_mae") or {}).get("mean") for s, bf in by_strat.items()}
    means = {s: m for s, m in means.items() if m is not None}
    rows = _baseline_table(summary, target)
    if not means or not rows:
        return []
    best = min(means, key=means.get)
    beaten = [label for label, m in rows if m.get("frobenius_mae") is not None and means[best] < m["frobenius_mae"]]
    missed = [label for label, m in rows if m.get("frobenius_mae") is not None and means[best] >= m["frobenius_mae"]]
    text = f"- Lowest mean test Frobenius MAE at {_fraction_label(float(top))}: {best} ({means[best]:.4g})"
    text += f"; below {', '.join(beaten)}" if beaten else ""
    text += f"; **not below {', '.join(missed)}**" if missed else ""
    return [text + "."]


def plot_learning_curves(summary: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``learning_curve_<target>.png``: test Frobenius MAE vs fraction, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for target, by_strat in summary["results"].items():
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for strat, by_frac in by_strat.items():
            fs = sorted(by_frac, key=float)
            x = np.array([float(f) for f in fs])
            m = np.array([by_frac[f]["test"]["frobenius_mae"]["mean"] for f in fs], dtype=float)
            s = np.array([by_frac[f]["test"]["frobenius_mae"]["std"] or 0.0 for f in fs], dtype=float)
            ax.errorbar(100 * x, m, yerr=s, marker="o", capsize=3, label=strat)
        base = [(f"baseline: {name.replace('_', ' ')}", m)
                for name, m in sorted(((summary.get("baselines") or {}).get(target) or {}).items())]
        base += [(f"baseline: {label}", m) for _, label, m in _file_rows(summary, target)]
        for (name, metrics), style in zip(base, (":", "--", "-.", (0, (1, 4)), (0, (5, 5)))):
            value = metrics.get("frobenius_mae")
            if value is not None:
                ax.axhline(value, color="gray", ls=style, lw=1, label=name)
        unit = summary["units"].get(target_property(target)[0]) or "dimensionless"
        ax.set_xscale("log")
        ticks = sorted({100 * float(f) for by_frac in by_strat.values() for f in by_frac})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training materials of the target (%)")
        ax.set_ylabel(f"test Frobenius MAE ({unit})")
        ax.set_title(f"{target}: mean ± std over {len(summary['config']['seeds'])} seed(s)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"learning_curve_{target}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def plot_best_parity(summary: Mapping[str, Any], store: Any, out_dir: Path) -> list[Path]:
    """``parity_<property>.png`` of the best model on validation per property (test set)."""
    import irreptensor as it
    from irreptensor_ml.plots import plot_parity

    written = []
    for prop, best in _best_models(summary).items():
        kind, part = target_property(prop)
        if best["strategy"] == "pretrain":
            run_id = best["run_id"]
        else:
            runs = summary["results"][prop][best["strategy"]][_fkey(best["fraction"])]["runs"]
            run_id = min(runs, key=lambda r: r["val"].get("frobenius_mae") or math.inf)["run_id"]
        preds = store.load_predictions(run_id)
        if part is not None:
            preds = preds["parts"][prop]
        pi, ti = np.asarray(preds["pred_irreps"]), np.asarray(preds["true_irreps"])
        written.append(plot_parity(
            it.compose(pi, kind), it.compose(ti, kind), kind, out_dir / f"parity_{prop}.png",
            pred_irreps=pi, true_irreps=ti,
            title=f"{prop}: {best['strategy']} (test, N = {len(ti)})",
        ))
    return written


def write_report(summary: Mapping[str, Any], out_dir: str | Path, store: Any | None = None) -> list[Path]:
    """Write ``summary.json``, ``results.md`` and the plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.json", out / "results.md"]
    files[0].write_text(json.dumps(summary, indent=1, allow_nan=False, default=str) + "\n")
    files[1].write_text(markdown_report(summary))
    try:
        files += plot_learning_curves(summary, out)
        if store is not None:
            files += plot_best_parity(summary, store, out)
    except ImportError as exc:  # matplotlib missing (e.g. a bare GPU node)
        logger.warning("plots skipped: %s", exc)
    return files
