"""Old names of irreptensor_ml kept for one release: same result, a DeprecationWarning naming the new name."""

from __future__ import annotations

import numpy as np
import pytest

from irreptensor_ml import metrics as M
from irreptensor_ml.data import records


def _tetragonal():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.tetragonal(3.9, 4.2), ["Ba", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0.0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _stiffness() -> np.ndarray:
    rng = np.random.default_rng(3)
    A = rng.normal(size=(2, 6, 6))
    V = A @ A.transpose(0, 2, 1) + 6 * np.eye(6)
    import irreptensor as it

    return np.asarray(it.from_voigt(V, "elastic"))


def test_records_check_property_is_property_rank() -> None:
    with pytest.warns(DeprecationWarning, match=r"irreptensor_ml\.data\.records\.property_rank"):
        assert records.check_property("piezoelectric") == 3
    assert [records.property_rank(p) for p in ("dielectric", "piezoelectric", "elastic")] == [2, 3, 4]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="unknown property 'magnetic'"):
        records.check_property("magnetic")
    # the one check_property left returns the name
    assert M.check_property("elastic") == "elastic"


def test_records_symmetry_residual_is_structure_symmetry_residual() -> None:
    st, T = _tetragonal(), np.diag([5.0, 6.0, 7.0])
    with pytest.warns(DeprecationWarning, match=r"irreptensor_ml\.data\.records\.structure_symmetry_residual"):
        old = records.symmetry_residual(st, T, "dielectric", 0.01)
    assert old == records.structure_symmetry_residual(st, T, "dielectric", 0.01)


def test_metrics_vrh_moduli_is_vrh_moduli_table() -> None:
    C = _stiffness()
    with pytest.warns(DeprecationWarning, match=r"irreptensor_ml\.metrics\.vrh_moduli_table"):
        old = M.vrh_moduli(C)
    new = M.vrh_moduli_table(C)
    assert old.keys() == new.keys()
    for k in new:
        np.testing.assert_array_equal(old[k], new[k])


def test_new_names_do_not_warn() -> None:
    import warnings

    C = _stiffness()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        records.property_rank("elastic")
        M.vrh_moduli_table(C)
        M.derived_scalars(C, "elastic")


def test_strategies_trunk_state_from_model_state_is_model_trunk_state() -> None:
    import torch

    from irreptensor_ml.model import trunk_state
    from irreptensor_ml.transfer import strategies

    state = {"trunk.w": torch.ones(2), "heads.elastic.w": torch.zeros(1)}
    with pytest.warns(DeprecationWarning, match=r"strategies\.trunk_state_from_model_state is deprecated.*predictor\.trunk_state"):
        old = strategies.trunk_state_from_model_state(state)
    assert old.keys() == trunk_state(state).keys() == {"w"}
