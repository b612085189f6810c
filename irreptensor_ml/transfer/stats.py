"""Statistics of the transfer study: mean ± std over seeds and paired bootstrap intervals.

Paired bootstrap of a strategy against the baseline (``scratch``) at one (target, fraction):

* ``a[s, i]`` and ``b[s, i]`` are the Frobenius errors of test material ``i`` of the model of
  seed ``s`` of the strategy and of the baseline. Both are evaluated on the SAME test materials,
  and seed ``s`` of both used the same training subsample, so errors are paired by (seed,
  material).
* The statistic is the difference of the mean Frobenius errors, ``mean_{s,i} a - mean_{s,i} b``
  = ``mean_i d_i`` with ``d_i = mean_s (a[s, i] - b[s, i])``. Negative = the strategy is better.
* Its sampling distribution over test sets is estimated by resampling the *materials* ``i`` with
  replacement (``n_resamples`` times; :func:`scipy.stats.bootstrap`, percentile method, with
  numpy ``default_rng(seed)``, so the interval is exactly reproducible) and taking the percentile
  interval of the resampled means. Seeds are averaged,
  not resampled: the interval covers test-set sampling, and the seed spread is reported
  separately as the std over seeds.

:func:`verdict` turns an interval into words: ``better`` (entirely below 0), ``worse`` (entirely
above 0) or ``no significant difference``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["align_errors", "mean_std", "paired_bootstrap", "verdict"]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the finite values (std with ddof=1; ``None`` for n < 2).

    ``None``/NaN entries are left out and counted in ``"n_missing"``.
    """
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    ok = np.isfinite(arr)
    n = int(ok.sum())
    out: dict[str, Any] = {"mean": None, "std": None, "n": n, "n_missing": int(arr.size - n)}
    if n:
        out["mean"] = float(arr[ok].mean())
    if n >= 2:
        out["std"] = float(arr[ok].std(ddof=1))
    return out


def align_errors(
    runs_a: Mapping[int, Mapping[str, float]], runs_b: Mapping[int, Mapping[str, float]]
) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """Arrange per-material errors of two strategies as paired ``(n_seeds, n_materials)`` arrays.

    Args:
        runs_a, runs_b: ``{seed: {material id: error}}``.

    Returns ``(a, b, seeds, materials)`` over the seeds present in both.

    Raises ``ValueError`` if no seed is shared or the material sets of a seed differ (then the
    comparison would not be paired).
    """
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise ValueError(f"no common seed: {sorted(runs_a)} vs {sorted(runs_b)}")
    materials = sorted(runs_a[seeds[0]])
    for s in seeds:
        for name, runs in (("a", runs_a), ("b", runs_b)):
            if sorted(runs[s]) != materials:
                raise ValueError(
                    f"test materials of seed {s} ({name}) differ from those of seed {seeds[0]}; "
                    "a paired comparison needs the same test materials"
                )
    a = np.array([[runs_a[s][m] for m in materials] for s in seeds], dtype=np.float64)
    b = np.array([[runs_b[s][m] for m in materials] for s in seeds], dtype=np.float64)
    return a, b, seeds, materials


def paired_bootstrap(
    errors_a: Any,
    errors_b: Any,
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap interval of ``mean(errors_a) - mean(errors_b)`` over materials.

    Args:
        errors_a, errors_b: ``(n_materials,)`` or ``(n_seeds, n_materials)`` per-material errors
            of the strategy and the baseline, paired element by element.
        n_resamples: bootstrap resamples of the materials.
        confidence: coverage of the percentile interval (0.95 -> 2.5 % and 97.5 % quantiles).
        seed: seed of ``numpy.random.default_rng``.

    Returns ``{"diff", "low", "high", "confidence", "n_materials", "n_seeds", "n_resamples",
    "mean_a", "mean_b", "rel_diff"}`` (``rel_diff = diff / mean_b``).
    """
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"errors_a shape {a.shape} != errors_b shape {b.shape}: not paired")
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"errors must be (n_materials,) or (n_seeds, n_materials), got {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("errors contain NaN or inf")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from scipy.stats import bootstrap

    d = (a - b).mean(axis=0)  # per material, averaged over seeds
    n = d.size
    ci = bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                   rng=np.random.default_rng(seed), vectorized=True, batch=max(1, 2_000_000 // n)).confidence_interval
    low, high = ci.low, ci.high
    mean_b = float(b.mean())
    diff = float(d.mean())
    return {
        "diff": diff,
        "low": float(low),
        "high": float(high),
        "confidence": float(confidence),
        "n_materials": int(n),
        "n_seeds": int(a.shape[0]),
        "n_resamples": int(n_resamples),
        "mean_a": float(a.mean()),
        "mean_b": mean_b,
        "rel_diff": diff / mean_b if mean_b != 0 else math.nan,
    }


def verdict(interval: Mapping[str, float], *, lower_is_better: bool = True) -> str:
    """``"better"``, ``"worse"`` or ``"no significant difference"`` for a difference interval
    (strategy minus baseline); with ``lower_is_better`` an interval below 0 is ``better``."""
    low, high = float(interval["low"]), float(interval["high"])
    if high < 0:
        return "better" if lower_is_better else "worse"
    if low > 0:
        return "worse" if lower_is_better else "better"
    return "no significant difference"
