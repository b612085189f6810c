"""Trivial baselines of the transfer report (structure-blind predictors a model must beat)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import irreptensor as it
from irreptensor_ml.transfer.report import _baseline_lines, trivial_baselines


class _Targets:
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def targets(self, prop: str) -> torch.Tensor:
        return torch.as_tensor(self.rows)


class _Data:
    """The two methods of StudyData that trivial_baselines uses, over fixed arrays."""

    def __init__(self, prop: str, train: np.ndarray, test: np.ndarray) -> None:
        self.irreps = {prop: it.irreps(prop)}
        self._rows = {"train": train, "test": test}

    def indices(self, side: str, prop: str) -> str:
        return side

    def dataset(self, side: str, props: list[str]) -> _Targets:
        return _Targets(self._rows[side])


def test_zero_and_isotropic_median_baselines_of_dielectric():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(51, 6)) + np.array([10.0, 0, 0, 0, 0, 0])
    test = rng.normal(size=(7, 6)) + np.array([12.0, 0, 0, 0, 0, 0])
    base = trivial_baselines(_Data("dielectric", train, test), "dielectric")
    assert set(base) == {"zero", "isotropic_median"}
    # the irrep basis is orthonormal: Frobenius error of the zero tensor = norm of the irreps
    assert base["zero"]["frobenius_mae"] == pytest.approx(np.linalg.norm(test, axis=1).mean(), rel=1e-12)
    const = np.zeros(6)
    const[0] = np.median(train[:, 0])
    expected = np.linalg.norm(test - const, axis=1).mean()
    assert base["isotropic_median"]["frobenius_mae"] == pytest.approx(expected, rel=1e-12)
    assert "isotropic training median: Frobenius MAE" in "".join(
        _baseline_lines({"baselines": {"dielectric": base}}, "dielectric"))


def test_piezoelectric_has_no_invariant_so_only_the_zero_baseline():
    rng = np.random.default_rng(1)
    base = trivial_baselines(_Data("piezoelectric", rng.normal(size=(9, 18)), rng.normal(size=(4, 18))),
                             "piezoelectric")
    assert set(base) == {"zero"}


def test_elastic_zero_baseline_has_undefined_moduli_as_none():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(9, 21)) + np.r_[300.0, 100.0, np.zeros(19)]
    test = rng.normal(size=(3, 21)) + np.r_[300.0, 100.0, np.zeros(19)]
    base = trivial_baselines(_Data("elastic", train, test), "elastic")
    assert base["zero"]["K_VRH_mae"] is None  # the zero stiffness has no Reuss bound
    assert base["isotropic_median"]["K_VRH_mae"] is not None
    assert _baseline_lines({}, "elastic") == []  # summaries written before baselines existed


def test_reference_rows_are_read_when_present(tmp_path):
    import json

    from irreptensor_ml.transfer.report import _reference_rows

    f = tmp_path / "ref.json"
    f.write_text(json.dumps({"row": "sevennet-0 finite strain", "metrics": {"frobenius_mae": 268.0},
                             "n_test": 135, "n_done": 44, "complete": False, "per_material": []}))
    rows = _reference_rows({"reference_rows": {"elastic": str(f), "dielectric": str(tmp_path / "missing.json")}})
    assert set(rows) == {"elastic"}  # a missing file is left out (with a warning), not an error
    assert rows["elastic"]["metrics"]["frobenius_mae"] == 268.0 and rows["elastic"]["n_done"] == 44


def test_learning_curve_draws_the_baselines(tmp_path, monkeypatch):
    """The learning-curve figure shows each trivial baseline as a labelled horizontal line."""
    import matplotlib.axes

    from irreptensor_ml.transfer.report import plot_learning_curves

    cell = lambda v: {"test": {"frobenius_mae": {"mean": v, "std": 0.1}}}  # noqa: E731
    summary = {
        "results": {"dielectric": {"scratch": {"0.5": cell(25.0), "1.0": cell(21.0)}}},
        "units": {"dielectric": ""},
        "config": {"seeds": [0, 1, 2]},
        "baselines": {"dielectric": {"zero": {"frobenius_mae": 32.8},
                                     "isotropic_median": {"frobenius_mae": 20.9}}},
    }
    lines = []
    real = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        lines.append((y, kwargs.get("label")))
        return real(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    (path,) = plot_learning_curves(summary, tmp_path)
    assert path.is_file() and path.stat().st_size > 0
    assert sorted(lines) == [(20.9, "baseline: isotropic median"), (32.8, "baseline: zero")]


def test_report_question_names_the_reused_trunk():
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.report import _question

    summary = {"pretrain": {"property": "elastic"}}
    quick = _question(summary, load_study_config("quick"))
    assert "pretrained on **elastic**" in quick and "7net-0" not in quick
    foundation = _question(summary, load_study_config("foundation-cpu"))
    assert "**7net-0**" in foundation and "pretrained on **elastic**" not in foundation
    assert "elastic, dielectric, piezoelectric" in foundation
