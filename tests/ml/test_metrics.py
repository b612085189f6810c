"""Tests of irreptensor_ml.metrics against hand-computed values and pymatgen."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.analysis.elasticity import ElasticTensor
from pymatgen.core.tensors import Tensor

import irreptensor as it
from irreptensor_ml import metrics as M


def _random_stiffness(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` positive-definite 6x6 stiffness matrices (GPa) -> Cartesian (n, 3, 3, 3, 3)."""
    A = rng.normal(size=(n, 6, 6)) * 20.0
    V = A @ np.swapaxes(A, 1, 2) + 50.0 * np.eye(6)
    return np.stack([Tensor.from_voigt(v) for v in V])


def test_irrep_blocks_elastic_layout() -> None:
    blocks = M.irrep_blocks("2x0e+2x2e+1x4e")
    assert [(n, s.start, s.stop) for n, s in blocks] == [
        ("0e[0]", 0, 1),
        ("0e[1]", 1, 2),
        ("2e[0]", 2, 7),
        ("2e[1]", 7, 12),
        ("4e", 12, 21),
    ]


def test_irrep_blocks_other_layouts() -> None:
    assert [n for n, _ in M.irrep_blocks("1x0e+1x2e")] == ["0e", "2e"]
    assert [(n, s.stop - s.start) for n, s in M.irrep_blocks("2x1o+1x2o+1x3o")] == [
        ("1o[0]", 3),
        ("1o[1]", 3),
        ("2o", 5),
        ("3o", 7),
    ]
    # repeated irrep across separate terms is numbered globally
    assert [n for n, _ in M.irrep_blocks("1x0e+1x1o+1x0e")] == ["0e[0]", "1o", "0e[1]"]
    with pytest.raises(ValueError, match="cannot parse term"):
        M.irrep_blocks("2x0q")


@pytest.mark.parametrize("kind", ["dielectric", "piezoelectric", "elastic"])
def test_irrep_blocks_agree_with_core(kind: str) -> None:
    """Names and slices parsed from the irreps string equal irreptensor.blocks(kind)."""
    ours = [(n, s.start, s.stop) for n, s in M.irrep_blocks(it.irreps(kind))]
    core = [(b.name, b.start, b.stop) for b in it.blocks(kind)]
    assert ours == core


def test_per_block_mae_known_values() -> None:
    true = np.zeros((2, 21))
    pred = np.zeros((2, 21))
    pred[:, 0] = [1.0, 3.0]  # 0e[0]: mean |err| = 2
    pred[0, 2:7] = 5.0  # 2e[0]: 25 over 10 entries = 2.5
    pred[1, 12:21] = -1.0  # 4e: 9 over 18 entries = 0.5
    got = M.per_block_mae(pred, true, "2x0e+2x2e+1x4e")
    assert got == pytest.approx({"0e[0]": 2.0, "0e[1]": 0.0, "2e[0]": 2.5, "2e[1]": 0.0, "4e": 0.5})
    with pytest.raises(ValueError, match=r"pred_irreps: expected shape \(N, 21\)"):
        M.per_block_mae(np.zeros((2, 20)), true[:, :20], "2x0e+2x2e+1x4e")


def test_vrh_matches_pymatgen() -> None:
    rng = np.random.default_rng(0)
    C = _random_stiffness(rng, 5)
    got = M.vrh_moduli_table(C)
    for i in range(5):
        et = ElasticTensor(C[i])
        assert got["K_V"][i] == pytest.approx(et.k_voigt, rel=1e-10)
        assert got["G_V"][i] == pytest.approx(et.g_voigt, rel=1e-10)
        assert got["K_R"][i] == pytest.approx(et.k_reuss, rel=1e-9)
        assert got["G_R"][i] == pytest.approx(et.g_reuss, rel=1e-9)
        assert got["K_VRH"][i] == pytest.approx(et.k_vrh, rel=1e-9)
        assert got["G_VRH"][i] == pytest.approx(et.g_vrh, rel=1e-9)
        assert got["Y_VRH"][i] == pytest.approx(et.y_mod / 1e9, rel=1e-9)


def test_vrh_isotropic_hand_computed() -> None:
    # isotropic: C11 = K + 4G/3, C12 = K - 2G/3, C44 = G -> all bounds equal K and G
    K, G = 160.0, 80.0
    V = np.zeros((6, 6))
    V[:3, :3] = K - 2 * G / 3
    V[np.arange(3), np.arange(3)] = K + 4 * G / 3
    V[np.arange(3, 6), np.arange(3, 6)] = G
    got = M.vrh_moduli_table(Tensor.from_voigt(V))
    for k in ("K_V", "K_R", "K_VRH"):
        assert got[k][0] == pytest.approx(K, rel=1e-12)
    for k in ("G_V", "G_R", "G_VRH"):
        assert got[k][0] == pytest.approx(G, rel=1e-12)
    assert got["Y_VRH"][0] == pytest.approx(9 * K * G / (3 * K + G), rel=1e-12)


def test_vrh_singular_gives_nan_not_error() -> None:
    got = M.vrh_moduli_table(np.zeros((3, 3, 3, 3)))
    assert got["K_V"][0] == 0.0
    assert math.isnan(got["K_R"][0]) and math.isnan(got["G_VRH"][0])


def test_derived_scalars_dielectric_and_piezo() -> None:
    eps = np.diag([2.0, 3.0, 7.0])
    c, s = np.cos(0.7), np.sin(0.7)
    rot = Tensor(eps).rotate(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
    got = M.derived_scalars(np.stack([eps, rot]), "dielectric")
    assert got["mean_eigenvalue"] == pytest.approx([4.0, 4.0])
    e_voigt = np.zeros((3, 6))
    e_voigt[2, 2] = 1.5
    e_voigt[0, 4] = -2.5  # e15
    e = np.asarray(Tensor.from_voigt(e_voigt))
    assert M.derived_scalars(e, "piezoelectric")["max_abs_e"] == pytest.approx([2.5])
    with pytest.raises(ValueError, match="unknown property 'magnetic'"):
        M.derived_scalars(e, "magnetic")
    with pytest.raises(ValueError, match=r"tensor: expected a Cartesian dielectric tensor batch"):
        M.derived_scalars(e[None], "dielectric")


def test_relative_error_and_ewt_edge_cases() -> None:
    true = np.zeros((4, 3, 3))
    true[:, 0, 0] = [10.0, 10.0, 10.0, 0.0]
    pred = true.copy()
    pred[0, 0, 0] += 2.5  # rel 0.25 exactly: NOT below 25 %
    pred[1, 0, 0] += 0.99  # rel 0.099: below 10 %
    pred[2, 0, 0] += 0.5  # rel 0.05 exactly: not below 5 %
    pred[3, 1, 1] += 0.2  # zero target -> divided by floor 1 -> 0.2
    rel = M.relative_frobenius_error(pred, true, floor=1.0)
    assert rel == pytest.approx([0.25, 0.099, 0.05, 0.2])
    assert M.ewt(rel, 0.25) == pytest.approx(0.75)
    assert M.ewt(rel, 0.10) == pytest.approx(0.5)
    assert M.ewt(rel, 0.05) == pytest.approx(0.0)
    assert math.isnan(M.ewt(np.zeros(0), 0.25))
    with pytest.raises(ValueError, match="floor must be positive"):
        M.relative_frobenius_error(pred, true, floor=0.0)


def test_near_zero_piezo_handling() -> None:
    """Near-zero targets use the 0.1 C/m^2 floor; EwT is also reported above the floor only."""
    true = np.zeros((3, 3, 3, 3))
    true[0, 2, 2, 2] = 1e-6  # essentially zero tensor
    true[1, 2, 2, 2] = 2.0
    true[2, 2, 2, 2] = 1.0
    pred = true.copy()
    pred[0, 2, 2, 2] += 0.012  # 0.012 / 0.1 = 12 % (raw relative error would be 1.2e4)
    pred[1, 2, 2, 2] += 0.1  # 5 %
    pred[2, 2, 2, 2] += 0.5  # 50 %
    m = M.tensor_metrics(pred, true, "piezoelectric")
    assert m["rel_frobenius"] == pytest.approx((0.12 + 0.05 + 0.5) / 3)
    assert m["n_above_floor"] == 2
    assert m["ewt25"] == pytest.approx(2 / 3)
    assert m["ewt25_above_floor"] == pytest.approx(1 / 2)
    assert m["ewt10"] == pytest.approx(1 / 3)
    assert m["ewt10_above_floor"] == pytest.approx(1 / 2)
    assert M.RELATIVE_ERROR_FLOORS == {"piezoelectric": 0.1, "dielectric": 1.0, "elastic": 1.0}
    all_small = M.tensor_metrics(pred[:1], true[:1], "piezoelectric")
    assert all_small["n_above_floor"] == 0 and math.isnan(all_small["ewt25_above_floor"])


def test_tensor_metrics_elastic_hand_computed_and_torch() -> None:
    rng = np.random.default_rng(1)
    true = _random_stiffness(rng, 4)
    pred = true + rng.normal(size=true.shape) * 2.0
    pred = 0.5 * (pred + pred.transpose(0, 2, 1, 3, 4))  # keep the tensor in the symmetric space
    pred = 0.5 * (pred + pred.transpose(0, 1, 2, 4, 3))
    pred = 0.5 * (pred + pred.transpose(0, 3, 4, 1, 2))
    m = M.tensor_metrics(pred, true, "elastic")
    diff = pred - true
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(np.abs(diff).mean())
    fro = np.array([np.linalg.norm(d.ravel()) for d in diff])
    assert m["frobenius_mae"] == pytest.approx(fro.mean())
    tn = np.array([np.linalg.norm(t.ravel()) for t in true])
    rel = fro / tn
    assert m["rel_frobenius"] == pytest.approx(rel.mean())
    assert m["ewt25"] == pytest.approx(np.mean(rel < 0.25))
    kp = [ElasticTensor(c).k_vrh for c in pred]
    kt = [ElasticTensor(c).k_vrh for c in true]
    gp = [ElasticTensor(c).g_vrh for c in pred]
    gt = [ElasticTensor(c).g_vrh for c in true]
    yp = [ElasticTensor(c).y_mod / 1e9 for c in pred]
    yt = [ElasticTensor(c).y_mod / 1e9 for c in true]
    assert m["K_VRH_mae"] == pytest.approx(np.mean(np.abs(np.subtract(kp, kt))), rel=1e-9)
    assert m["G_VRH_mae"] == pytest.approx(np.mean(np.abs(np.subtract(gp, gt))), rel=1e-9)
    assert m["Y_VRH_mae"] == pytest.approx(np.mean(np.abs(np.subtract(yp, yt))), rel=1e-9)
    # block MAEs from irreps computed by the core package
    xp, xt = it.decompose(pred, "elastic"), it.decompose(true, "elastic")
    assert m["block_mae/4e"] == pytest.approx(np.abs(xp - xt)[:, 12:].mean(), rel=1e-6)
    assert m["block_mae/0e[1]"] == pytest.approx(np.abs(xp - xt)[:, 1].mean(), rel=1e-6)
    # torch input gives the same numbers
    mt = M.tensor_metrics(torch.from_numpy(pred), torch.from_numpy(true), "elastic")
    assert mt == pytest.approx(m, nan_ok=True)


def test_tensor_metrics_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown property 'elasticity'"):
        M.tensor_metrics(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), "elasticity")
    with pytest.raises(ValueError, match=r"pred: expected a Cartesian elastic tensor batch"):
        M.tensor_metrics(np.zeros((1, 6, 6)), np.zeros((1, 3, 3, 3, 3)), "elastic")
    with pytest.raises(ValueError, match=r"pred shape \(2, 3, 3\) != true shape \(1, 3, 3\)"):
        M.tensor_metrics(np.zeros((2, 3, 3)), np.zeros((1, 3, 3)), "dielectric")
    with pytest.raises(ValueError, match="zero samples"):
        M.tensor_metrics(np.zeros((0, 3, 3)), np.zeros((0, 3, 3)), "dielectric")


def test_format_metrics_table() -> None:
    table = M.format_metrics_table({"dielectric": {"mae": 0.5, "ewt25": 1.0}})
    assert table.splitlines()[0] == "| metric | dielectric |"
    assert "| mae | 0.5 |" in table


def test_singular_predicted_stiffness_is_counted_not_averaged() -> None:
    rng = np.random.default_rng(2)
    true = _random_stiffness(rng, 3)
    pred = true.copy()
    pred[1] = 0.0  # singular prediction: Reuss bound undefined
    m = M.tensor_metrics(pred, true, "elastic")
    assert m["K_VRH_n_invalid"] == 1 and m["G_VRH_n_invalid"] == 1
    assert m["K_VRH_mae"] == pytest.approx(0.0, abs=1e-9)  # the two valid samples are exact
    assert m["frobenius_mae"] == pytest.approx(np.linalg.norm(true[1].ravel()) / 3)


def _cubic_voigt(c11: float, c12: float, c44: float) -> np.ndarray:
    V = np.full((3, 3), c12) + np.eye(3) * (c11 - c12)
    out = np.zeros((6, 6))
    out[:3, :3] = V
    out[3:, 3:] = np.eye(3) * c44
    return out


def test_zener_ratio_on_cubic_form_only() -> None:
    cubic = it.from_voigt(_cubic_voigt(200.0, 100.0, 80.0), "elastic")  # A = 160 / 100
    iso = it.from_voigt(_cubic_voigt(200.0, 100.0, 50.0), "elastic")  # A = 1
    hexa = np.asarray(it.from_voigt(_cubic_voigt(200.0, 100.0, 80.0) + np.diag([0, 0, 60.0, 0, 0, 0]), "elastic"))
    true = np.stack([cubic, iso, hexa])
    pred = np.stack([iso, iso, iso])  # an isotropic prediction for everything
    z = M.zener_metrics(pred, true)
    assert z["zener_n"] == 2  # the hexagonal-like tensor is not cubic
    assert z["zener_mae"] == pytest.approx(0.6 / 2)
    assert z["zener_mae_guess_1"] == pytest.approx(0.6 / 2)
    assert z["zener_n_pred_isotropic"] == 2 and z["zener_n_true_isotropic"] == 1
    # a rotated cubic tensor is not of cubic form in the data frame: left out, not mis-scored
    rot = np.asarray(it.rotate(cubic, it.random_rotation(seed=1), "elastic"))[None]
    assert M.zener_metrics(rot, rot)["zener_n"] == 0
    m = M.tensor_metrics(pred, true, "elastic")
    assert m["n_not_positive_definite"] == 0 and m["zener_n"] == 2
    bad = np.asarray(it.from_voigt(_cubic_voigt(100.0, 150.0, 50.0), "elastic"))  # C11 < C12: unstable
    assert M.tensor_metrics(bad[None], true[:1], "elastic")["n_not_positive_definite"] == 1


def _random_piezo(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, int(it.dim("piezoelectric"))))
    return np.asarray(it.compose(x, "piezoelectric"))


def test_piezo_sign_free_metrics_ignore_the_sign_and_rotation() -> None:
    true = _random_piezo(20)
    flipped = true * np.where(np.arange(20) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    m = M.piezo_sign_free_metrics(flipped, true)
    assert m["norm_mae"] == pytest.approx(0.0, abs=1e-12)
    assert m["frobenius_mae_sign_free"] == pytest.approx(0.0, abs=1e-12)
    assert m["norm_spearman"] == pytest.approx(1.0)
    assert m["sign_agreement"] == pytest.approx(0.5)
    assert all(m[k] == pytest.approx(0.0, abs=1e-12) for k in m if k.startswith("block_norm_mae/"))
    # the longitudinal maximum is a rotation invariant (up to the direction grid)
    R = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0]
    rotated = np.asarray(it.rotate(true, R, "piezoelectric"))
    assert M.max_longitudinal(rotated) == pytest.approx(M.max_longitudinal(true), rel=2e-2)
    # a uniaxial tensor e_333 = 1 has its largest longitudinal coefficient 1 along z
    e = np.zeros((1, 3, 3, 3))
    e[0, 2, 2, 2] = 1.0
    assert M.max_longitudinal(e)[0] == pytest.approx(1.0)
    # a wrong prediction is seen
    zero = M.piezo_sign_free_metrics(np.zeros_like(true), true)
    assert zero["norm_mae"] == pytest.approx(M.frobenius_norm(true).mean())
    assert M.tensor_metrics(flipped, true, "piezoelectric")["sign_agreement"] == pytest.approx(0.5)


def test_dielectric_admissibility_and_refractive_index() -> None:
    true = np.stack([np.eye(3) * 4.0, np.diag([2.25, 2.25, 2.25])])
    pred = np.stack([np.diag([0.5, 4.0, 4.0]), np.eye(3) * 4.0])
    m = M.tensor_metrics(pred, true, "dielectric")
    assert m["n_eigenvalue_below_1"] == 1
    assert "n_eigenvalue_below_1" not in M.tensor_metrics(pred, true, "dielectric", part="ionic")
    assert M.refractive_index(true) == pytest.approx([2.0, 1.5])
    n_pred = np.sqrt(8.5 / 3)
    assert M.refractive_index_metrics(pred, true)["refractive_index_mae"] == pytest.approx(
        (abs(n_pred - 2.0) + 0.5) / 2
    )
