"""Statistics of the transfer study on synthetic data with known answers (no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from irreptensor_ml.transfer.stats import align_errors, mean_std, paired_bootstrap, verdict


def test_constant_difference_gives_a_degenerate_interval():
    rng = np.random.default_rng(1)
    b = rng.uniform(1, 5, size=40)
    out = paired_bootstrap(b - 0.3, b, n_resamples=2000)
    assert out["diff"] == pytest.approx(-0.3)
    assert out["low"] == pytest.approx(-0.3) and out["high"] == pytest.approx(-0.3)
    assert verdict(out) == "better"
    assert verdict(paired_bootstrap(b + 0.3, b, n_resamples=2000)) == "worse"


def test_two_material_example_matches_the_exact_bootstrap_distribution():
    # d = [0, 1]: resampled means are 0 (p=1/4), 0.5 (p=1/2), 1 (p=1/4) -> 95 % interval [0, 1]
    out = paired_bootstrap([0.0, 1.0], [0.0, 0.0], n_resamples=20000, seed=3)
    assert out["diff"] == 0.5
    assert (out["low"], out["high"]) == (0.0, 1.0)
    assert verdict(out) == "no significant difference"
    # a 40 % interval (30 % .. 70 % quantiles) is the middle value only
    mid = paired_bootstrap([0.0, 1.0], [0.0, 0.0], n_resamples=20000, seed=3, confidence=0.4)
    assert (mid["low"], mid["high"]) == (0.5, 0.5)


def test_interval_matches_the_normal_approximation_and_is_reproducible():
    rng = np.random.default_rng(0)
    n, sigma = 400, 2.0
    d = rng.normal(0.5, sigma, size=n)
    base = rng.uniform(10, 20, size=n)
    out = paired_bootstrap(base + d, base, n_resamples=20000, seed=0)
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert out["diff"] == pytest.approx(d.mean())
    assert out["low"] == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert out["high"] == pytest.approx(d.mean() + half, abs=0.1 * half)
    again = paired_bootstrap(base + d, base, n_resamples=20000, seed=0)
    assert again == out  # fixed RNG seed -> identical interval
    assert json.loads(json.dumps(out)) == out


def test_pairing_removes_the_shared_per_material_difficulty():
    # errors vary hugely between materials but the strategy is uniformly 0.1 better:
    rng = np.random.default_rng(5)
    difficulty = rng.lognormal(0, 1.5, size=(3, 60))
    a, b = difficulty - 0.1 + rng.normal(0, 0.01, size=(3, 60)), difficulty
    out = paired_bootstrap(a, b, n_resamples=5000)
    assert out["n_seeds"] == 3 and out["n_materials"] == 60
    assert out["high"] < 0 and out["high"] - out["low"] < 0.02
    # an unpaired comparison (shuffled materials) could not resolve it
    shuffled = paired_bootstrap(a[:, rng.permutation(60)], b, n_resamples=5000)
    assert shuffled["low"] < 0 < shuffled["high"]


def test_seeds_are_averaged_per_material():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.zeros((2, 2))
    out = paired_bootstrap(a, b, n_resamples=1000)
    assert out["diff"] == pytest.approx(2.5) and out["mean_a"] == pytest.approx(2.5)
    assert math.isnan(out["rel_diff"])  # mean_b = 0
    with pytest.raises(ValueError, match="not paired"):
        paired_bootstrap(a, b[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.5)


def test_align_errors_pairs_by_seed_and_material():
    a = {0: {"m1": 1.0, "m2": 2.0}, 1: {"m2": 4.0, "m1": 3.0}, 7: {"m1": 0.0, "m2": 0.0}}
    b = {1: {"m1": 0.5, "m2": 0.5}, 0: {"m2": 1.0, "m1": 1.0}}
    ea, eb, seeds, mats = align_errors(a, b)
    assert seeds == [0, 1] and mats == ["m1", "m2"]
    np.testing.assert_array_equal(ea, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(eb, [[1.0, 1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="same test materials"):
        align_errors({0: {"m1": 1.0}}, {0: {"m2": 1.0}})
    with pytest.raises(ValueError, match="no common seed"):
        align_errors({0: {"m1": 1.0}}, {1: {"m1": 1.0}})


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3, "n_missing": 0}
    assert mean_std([4.0]) == {"mean": 4.0, "std": None, "n": 1, "n_missing": 0}
    assert mean_std([None, float("nan")]) == {"mean": None, "std": None, "n": 0, "n_missing": 2}


def test_interval_reproduces_the_committed_resampling_scheme():
    """The committed study intervals were drawn as ``rng.integers(0, n, (chunk, n))`` batches of
    ``default_rng(seed)`` with linear-interpolated quantiles; scipy.stats.bootstrap must give the
    same numbers, so regenerated reports match the committed ones."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 94)), rng.normal(size=(3, 94))
    d = (a - b).mean(axis=0)
    # 5000 resamples fit in one batch of 2,000,000 // 94 rows
    means = d[np.random.default_rng(7).integers(0, 94, size=(5000, 94))].mean(axis=1)
    low, high = np.quantile(means, [0.05, 0.95])
    out = paired_bootstrap(a, b, n_resamples=5000, confidence=0.9, seed=7)
    assert (out["low"], out["high"]) == (low, high)
