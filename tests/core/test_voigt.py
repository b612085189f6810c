"""Voigt and Mandel notation: round trips, factors, and the physical relations they must respect."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import irreptensor as it
from strategies import power_of_two_scale, tensors_of_kind

VOIGT_KINDS = ["dielectric", "piezoelectric", "piezoelectric_d", "elastic", "compliance"]
SHAPES = {"dielectric": (6,), "piezoelectric": (3, 6), "piezoelectric_d": (3, 6), "elastic": (6, 6), "compliance": (6, 6)}


def random_tensor(kind, rng, n=3):
    return it.compose(rng.normal(size=(n, it.dim(kind))), kind)


def random_stiffness(rng):
    A = rng.normal(size=(6, 6))
    return it.from_voigt(A @ A.T + 6 * np.eye(6), "elastic")


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(VOIGT_KINDS).flatmap(lambda k: st.tuples(st.just(k), tensors_of_kind(k, batch=(3,)))))
def test_round_trips(kind_T):
    kind, T = kind_T  # drawn tensors: tiny to huge entries, zeros, single components
    V = it.to_voigt(T, kind)
    assert V.shape == (3, *SHAPES[kind])
    np.testing.assert_allclose(it.from_voigt(V, kind), T, rtol=0, atol=1e-14 * np.abs(T).max() * 4)
    M = it.to_mandel(T, kind)
    np.testing.assert_allclose(it.from_mandel(M, kind), T, rtol=0, atol=1e-14 * np.abs(T).max() * 4)
    # Mandel is an isometry: Frobenius norm of the Cartesian tensor equals that of the Mandel form (both
    # divided by the same power of two, exactly, so that the squares neither overflow nor underflow)
    s = power_of_two_scale(T)
    np.testing.assert_allclose(np.sqrt(((M / s) ** 2).reshape(3, -1).sum(-1)),
                               np.sqrt(((T / s) ** 2).reshape(3, -1).sum(-1)), rtol=1e-14)


def test_voigt_order_and_factors():
    C = np.zeros((3, 3, 3, 3))
    C[1, 2, 0, 1] = C[2, 1, 0, 1] = C[1, 2, 1, 0] = C[2, 1, 1, 0] = 7.0
    C[0, 1, 1, 2] = C[1, 0, 1, 2] = C[0, 1, 2, 1] = C[1, 0, 2, 1] = 7.0
    C[0, 0, 2, 2] = C[2, 2, 0, 0] = 3.0
    V = it.to_voigt(C, "elastic")
    assert V[3, 5] == V[5, 3] == 7.0 and V[0, 2] == V[2, 0] == 3.0  # yz = 4th, xy = 6th (0-based 3, 5)
    assert it.to_voigt(C, "compliance")[3, 5] == 28.0  # shear-shear: factor 4
    assert it.to_voigt(C, "compliance")[0, 2] == 3.0
    assert it.to_mandel(C, "elastic")[3, 5] == pytest.approx(14.0)  # sqrt(2)^2
    e = np.zeros((3, 3, 3))
    e[2, 0, 2] = e[2, 2, 0] = 1.5  # e_zxz = e_15 in Voigt (0-based (2, 4))
    assert it.to_voigt(e, "piezoelectric")[2, 4] == 1.5
    assert it.to_voigt(e, "piezoelectric_d")[2, 4] == 3.0
    eps = np.array([[1.0, 4.0, 5.0], [4.0, 2.0, 6.0], [5.0, 6.0, 3.0]])
    np.testing.assert_array_equal(it.to_voigt(eps, "dielectric"), [1, 2, 3, 6, 5, 4])


def test_compliance_is_the_inverse_of_stiffness_in_voigt_form():
    rng = np.random.default_rng(0)
    C = random_stiffness(rng)
    S = it.from_mandel(np.linalg.inv(it.to_mandel(C, "elastic")), "compliance")
    np.testing.assert_allclose(it.to_voigt(S, "compliance") @ it.to_voigt(C, "elastic"), np.eye(6), atol=1e-12)
    # and in Cartesian form S_ijmn C_mnkl is the symmetric identity
    Isym = 0.5 * (np.einsum("ik,jl->ijkl", np.eye(3), np.eye(3)) + np.einsum("il,jk->ijkl", np.eye(3), np.eye(3)))
    np.testing.assert_allclose(np.einsum("ijmn,mnkl->ijkl", S, C), Isym, atol=1e-12)


def test_stress_charge_equals_strain_charge_times_stiffness():
    """e_ijk = d_ilm C_lmjk in Cartesian form is e = d C with the e/d Voigt conventions."""
    rng = np.random.default_rng(1)
    C = random_stiffness(rng)
    d = random_tensor("piezoelectric_d", rng, n=1)[0]
    e = np.einsum("ilm,lmjk->ijk", d, C)
    np.testing.assert_allclose(it.to_voigt(e, "piezoelectric"),
                               it.to_voigt(d, "piezoelectric_d") @ it.to_voigt(C, "elastic"), atol=1e-12)


def test_torch_round_trip():
    torch = pytest.importorskip("torch")
    T = torch.tensor(random_tensor("elastic", np.random.default_rng(2)), dtype=torch.float32)
    V = it.to_voigt(T, "compliance")
    assert isinstance(V, torch.Tensor) and V.dtype == torch.float32 and V.shape == (3, 6, 6)
    assert torch.allclose(it.from_voigt(V, "compliance"), T, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"Voigt form must have trailing shape \(6, 6\)"):
        it.from_voigt(np.zeros((3, 6)), "elastic")
    with pytest.raises(ValueError, match="not symmetric"):
        it.from_voigt(np.triu(np.ones((6, 6))), "elastic")
    with pytest.raises(ValueError, match="named kinds only"):
        it.to_voigt(np.zeros((3, 3)), "ij=ji")
    with pytest.raises(ValueError, match=r"trailing shape \(3, 3, 3\)"):
        it.to_voigt(np.zeros((3, 3)), "piezoelectric")


@pytest.mark.parametrize("kind", VOIGT_KINDS)
def test_non_finite_values_are_refused(kind):
    """NaN/inf used to pass through to_voigt/from_voigt (and the Mandel forms) silently; the error names the
    argument and the first bad batch index, like decompose's."""
    T = random_tensor(kind, np.random.default_rng(5), n=3)
    V = it.to_voigt(T, kind)
    Tn, Vn = T.copy(), V.copy()
    Tn[2].flat[4] = np.nan
    Vn[1].flat[-1] = -np.inf
    with pytest.raises(ValueError, match=rf"{kind} tensor T contains NaN at batch index \(2,\)"):
        it.to_voigt(Tn, kind)
    with pytest.raises(ValueError, match=rf"{kind} tensor T contains NaN at batch index \(2,\)"):
        it.to_mandel(Tn, kind)
    for check in (True, False):
        with pytest.raises(ValueError, match=rf"{kind} Voigt form V contains inf at batch index \(1,\)"):
            it.from_voigt(Vn, kind, check=check)
    with pytest.raises(ValueError, match=rf"{kind} Mandel form M contains inf at batch index \(1,\)"):
        it.from_mandel(Vn, kind)
    with pytest.raises(ValueError, match=r"Voigt form V contains NaN at batch index \(\)"):
        it.from_voigt(np.full(SHAPES[kind], np.nan), kind)


def test_non_finite_torch_values_are_refused():
    torch = pytest.importorskip("torch")
    V = torch.tensor(it.to_voigt(random_tensor("elastic", np.random.default_rng(6)), "elastic"), requires_grad=True)
    with torch.no_grad():
        bad = V.clone()
        bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"elastic Voigt form V contains NaN at batch index \(0,\)"):
        it.from_voigt(bad, "elastic")
    out = it.from_voigt(V, "elastic")  # finite: the check leaves autograd alone
    out.sum().backward()
    assert V.grad is not None
