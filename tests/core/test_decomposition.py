"""decompose / compose: agreement with e3nn, round trips, norms, equivariance, parity, arrays, errors."""

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import irreptensor as it
from strategies import power_of_two_scale, rotations, tensors_of_kind

KINDS = ["dielectric", "piezoelectric", "elastic"]
FORMULAS = {"dielectric": "ij=ji", "piezoelectric": "ijk=ikj", "elastic": "ijkl=jikl=klij"}


def random_tensor(kind, rng, n=None):
    """A random tensor with exactly the kind's index symmetry (composed from random coordinates)."""
    shape = (it.dim(kind),) if n is None else (n, it.dim(kind))
    return it.compose(rng.normal(size=shape) * 50, kind)


def quaternion_rotation(q):
    q = np.asarray(q, dtype=float)
    q = q / np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@pytest.fixture(scope="module")
def e3nn_bases():
    torch = pytest.importorskip("torch")
    from e3nn.io import CartesianTensor

    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = {}
        for kind, fml in FORMULAS.items():
            ct = CartesianTensor(fml)
            out[kind] = (str(ct), ct.reduced_tensor_products().change_of_basis.flatten(1).numpy())
    finally:
        torch.set_default_dtype(prev)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_identical_to_e3nn_cartesian_tensor(kind, e3nn_bases):
    irreps, Qe = e3nn_bases[kind]
    assert it.irreps(kind) == irreps
    Q = it.basis(kind)
    assert Q.shape == Qe.shape
    # entries are O(1): 1e-13 relative to the largest entry, signs included
    assert np.abs(Q - Qe).max() <= 1e-13 * np.abs(Qe).max()


def test_irreps_strings_and_dims():
    assert it.irreps("elastic") == "2x0e+2x2e+1x4e" == it.irreps("stiffness") == it.irreps("compliance")
    assert it.irreps("piezoelectric") == "2x1o+1x2o+1x3o" == it.irreps("piezo") == it.irreps("piezoelectric_d")
    assert it.irreps("dielectric") == "1x0e+1x2e"
    assert [it.dim(k) for k in KINDS] == [6, 18, 21]
    assert [b.name for b in it.blocks("elastic")] == ["0e[0]", "0e[1]", "2e[0]", "2e[1]", "4e"]
    assert it.irreps("ij=-ji", parity=-1) == "1x1o"  # axial vs polar: parity flips
    assert it.irreps("ij=-ji") == "1x1e"


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), tensors_of_kind(k, batch=(4,)))))
def test_round_trip_and_norm(kind_T):
    kind, T = kind_T  # drawn tensors: tiny to huge entries, zeros, single components
    x = it.decompose(T, kind)
    T2 = it.compose(x, kind)
    scale = np.abs(T).max()
    assert np.abs(T2 - T).max() <= 1e-14 * scale * 8  # a few ulps of the largest entry
    # orthonormal basis: |x|_2 equals the Frobenius norm over all 3^r entries (both divided by the same
    # power of two, exactly, so that the squares neither overflow nor underflow)
    s = power_of_two_scale(T)
    nx = np.linalg.norm(x / s, axis=-1)
    nT = np.sqrt(((T / s).reshape(4, -1) ** 2).sum(-1))
    assert np.abs(nx - nT).max() <= 1e-14 * nT.max() * 8


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), tensors_of_kind(k))), rotations())
def test_equivariance_under_proper_and_improper_rotations(kind_T, R):
    kind, T = kind_T
    s = power_of_two_scale(T)  # norms of x / s: exact scaling, no overflow or underflow of the squares
    lhs = it.decompose(it.rotate(T, R, kind), kind)
    rhs = it.wigner_D(R, kind) @ it.decompose(T, kind)
    assert np.linalg.norm((lhs - rhs) / s) <= 1e-13 * np.linalg.norm(rhs / s)


@pytest.mark.parametrize("kind", KINDS)
def test_parity_under_inversion(kind):
    T = random_tensor(kind, np.random.default_rng(0))
    x = it.decompose(T, kind)
    xi = it.decompose(it.rotate(T, -np.eye(3), kind), kind)
    parity = np.concatenate([np.full(b.dim, b.parity) for b in it.blocks(kind)])
    np.testing.assert_array_equal(xi, parity * x)
    # polar odd-rank tensors flip sign, even-rank ones are invariant
    np.testing.assert_array_equal(it.rotate(T, -np.eye(3), kind), (-1) ** it.get_kind(kind).rank * T)


def test_axial_tensor_parity():
    # an axial vector (angular momentum) as "ij=-ji" with parity +1 is invariant under inversion
    A = np.array([[0.0, 1.0, -2.0], [-1.0, 0.0, 3.0], [2.0, -3.0, 0.0]])
    np.testing.assert_array_equal(it.rotate(A, -np.eye(3), "ij=-ji"), A)
    # the same as a rank-2 axial tensor (parity -1) flips
    np.testing.assert_array_equal(it.rotate(A, -np.eye(3), "ij=-ji", parity=-1), -A)
    x = it.decompose(A, "ij=-ji", parity=-1)
    R = -quaternion_rotation([0.3, 0.1, -0.5, 0.7])
    np.testing.assert_allclose(it.decompose(it.rotate(A, R, "ij=-ji", parity=-1), "ij=-ji", parity=-1),
                               it.wigner_D(R, "ij=-ji", parity=-1) @ x, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_dimensions_and_voigt_input(kind):
    rng = np.random.default_rng(1)
    T = random_tensor(kind, rng, n=6).reshape(2, 3, *it.get_kind(kind).cartesian_shape)
    x = it.decompose(T, kind)
    assert x.shape == (2, 3, it.dim(kind))
    np.testing.assert_allclose(it.decompose(it.to_voigt(T, kind), kind), x, rtol=0, atol=1e-12)
    assert it.decompose(T[0, 0], kind).shape == (it.dim(kind),)


def test_float32_in_float32_out():
    T = random_tensor("elastic", np.random.default_rng(2)).astype(np.float32)
    x = it.decompose(T, "elastic")
    assert x.dtype == np.float32
    assert it.compose(x, "elastic").dtype == np.float32
    assert it.decompose(np.eye(3, dtype=int), "dielectric").dtype == np.float64


def test_torch_in_torch_out_with_autograd():
    torch = pytest.importorskip("torch")
    for dtype in (torch.float32, torch.float64):
        T = torch.tensor(random_tensor("piezoelectric", np.random.default_rng(3), n=2), dtype=dtype)
        x = it.decompose(T, "piezoelectric")
        assert isinstance(x, torch.Tensor) and x.dtype == dtype and x.shape == (2, 18)
        T2 = it.compose(x, "piezoelectric")
        assert isinstance(T2, torch.Tensor) and T2.dtype == dtype
        np.testing.assert_allclose(T2.numpy(), T.numpy(), atol=1e-4 if dtype == torch.float32 else 1e-12)
    x = torch.randn(3, 21, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: it.decompose(it.compose(v, "elastic") ** 2, "elastic", symmetrize_indices=True), (x,))


def test_symmetrize_projects_and_the_error_names_the_asymmetry():
    rng = np.random.default_rng(4)
    C = random_tensor("elastic", rng, n=3)
    bad = C.copy()
    bad[1, 0, 1, 2, 2] += 5.0
    with pytest.raises(ValueError, match=r"lacks the index symmetry ijkl=jikl=klij.*relative asymmetry.*batch index \(1,\)"):
        it.decompose(bad, "elastic")
    x = it.decompose(bad, "elastic", symmetrize_indices=True)
    # the projection of the perturbation: the symmetric part of a single entry
    P = it.compose(x, "elastic")
    np.testing.assert_allclose(P[[0, 2]], C[[0, 2]], atol=1e-12)
    # the entry has 4 images under the 8 index permutations (stabilizer of order 2): 5 * 2/8 at each
    assert np.abs(P[1] - C[1]).max() == pytest.approx(5.0 / 4)
    # a small asymmetry under the tolerance is accepted
    ok = C.copy()
    ok[0, 0, 1, 2, 2] += 1e-9
    it.decompose(ok, "elastic")


@pytest.mark.parametrize("busy", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_product_and_checks(monkeypatch, dtype, busy):
    """Large batches go chunk by chunk (norms and product of a chunk together): the same coordinates as one
    product, and the checks see every chunk (the worst tensor is found in a later chunk). ``busy``: the
    switch to larger chunks after the first one (taken when BLAS threads are slow to start)."""
    from irreptensor import decomposition

    size = 7 * 81 * np.dtype(dtype).itemsize  # 7 tensors a chunk, 12 once "busy"
    monkeypatch.setattr(decomposition, "_CHUNK_BYTES", size)
    monkeypatch.setattr(decomposition, "_BUSY_CHUNK_BYTES", size * 12 // 7)
    monkeypatch.setattr(decomposition, "_BUSY_RATIO", 0.0 if busy else np.inf)
    C = random_tensor("elastic", np.random.default_rng(8), n=30).astype(dtype)
    x = it.decompose(C, "elastic")
    ref = C.reshape(30, 81).astype(np.float64) @ it.basis("elastic").T
    assert x.dtype == dtype
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-3)
    bad = C.astype(np.float64)
    bad[23, 0, 1, 2, 2] += 1.0
    bad[11, 0, 1, 2, 2] += 0.5
    with pytest.raises(ValueError, match=r"batch index \(23,\) \(2 of 30 tensors"):
        it.decompose(bad, "elastic")
    bad[17, 1, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN at batch index \(17,\)"):
        it.decompose(bad, "elastic", symmetrize_indices=True)


@pytest.mark.parametrize("bad,match", [
    (np.full((3, 3, 3, 3), np.nan), "contains NaN"),
    (np.full((2, 3, 3, 3, 3), np.inf), "contains inf at batch index"),
    (np.zeros((3, 3, 3)), r"trailing shape \(3, 3, 3, 3\) \(Cartesian\) or \(6, 6\) \(Voigt\)"),
    (np.zeros((6, 5)), "trailing shape"),
    (np.zeros((3, 3), dtype=complex), "complex128"),
])
def test_bad_input_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        it.decompose(bad, "elastic")


def test_huge_but_finite_values_are_not_called_inf():
    C = random_tensor("elastic", np.random.default_rng(5)) * 1e300
    x = it.decompose(C, "elastic")
    assert np.isfinite(x).all()


def test_compose_errors():
    with pytest.raises(ValueError, match="trailing dimension 21"):
        it.compose(np.zeros(20), "elastic")
    with pytest.raises(ValueError, match="NaN or inf"):
        it.compose(np.array([np.nan] + [0.0] * 20), "elastic")


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tensor kind 'elastc'.*'dielectric'.*'elastic'.*formula"):
        it.decompose(np.zeros((3, 3, 3, 3)), "elastc")
    with pytest.raises(ValueError, match="not a permutation"):
        it.irreps("ijk=ij")
    with pytest.raises(ValueError, match="only the zero tensor"):
        it.irreps("ij=-ij")


def test_rotation_must_be_orthogonal():
    T = random_tensor("dielectric", np.random.default_rng(6))
    with pytest.raises(ValueError, match=r"R is not orthogonal: max \|R R\^T - 1\| = 2\.100e-01"):
        it.rotate(T, np.diag([1.1, 1.0, 1.0]) * 1.0, "dielectric")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, 3\)"):
        it.rotate(T, np.eye(2), "dielectric")


def test_import_does_not_load_torch_or_sympy():
    code = "import sys, numpy as np, irreptensor as it; it.decompose(np.eye(6) * 100.0, 'elastic'); " \
           "print('torch' in sys.modules, 'sympy' in sys.modules, 'e3nn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


# ------------------------------------------------------------- bad tolerances, empty batches, mixed types


@pytest.mark.parametrize("tol", [float("nan"), -1e-3, float("inf"), "loose"])
def test_bad_tol_is_refused_not_a_silently_disabled_check(tol):
    """A NaN tol made ``resid > tol**2 * |T|^2`` always false: an asymmetric tensor passed unchecked."""
    bad = random_tensor("elastic", np.random.default_rng(9))
    bad[0, 1, 2, 2] += 5.0
    with pytest.raises(ValueError, match=rf"tol must be a finite number >= 0, got {tol!r}"):
        it.decompose(bad, "elastic", tol=tol)
    from irreptensor.rotation import check_rotation

    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0"):
        check_rotation(np.eye(3), tol=tol)
    # valid values still work: 0 is "exact to rounding", a numpy scalar is a number
    it.decompose(random_tensor("elastic", np.random.default_rng(9)), "elastic", tol=np.float32(1e-3))
    with pytest.raises(ValueError, match="lacks the index symmetry"):
        it.decompose(bad, "elastic", tol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_empty_batches(kind, lib):
    """Batches with a zero-length axis give correctly shaped empty results (Voigt forms were reshape errors)."""
    k = it.get_kind(kind)
    R = it.random_rotation(seed=0)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        zeros = lambda *s: torch.zeros(s, dtype=torch.float64)  # noqa: E731
        R = torch.tensor(R)
    else:
        zeros = lambda *s: np.zeros(s)  # noqa: E731
    for batch in [(0,), (2, 0)]:
        T = zeros(*batch, *k.cartesian_shape)
        V = zeros(*batch, *k.voigt_shape)
        assert tuple(it.decompose(T, kind).shape) == (*batch, it.dim(kind))
        assert tuple(it.decompose(V, kind).shape) == (*batch, it.dim(kind))
        assert tuple(it.compose(zeros(*batch, it.dim(kind)), kind).shape) == tuple(T.shape)
        assert tuple(it.to_voigt(T, kind).shape) == tuple(V.shape)
        assert tuple(it.from_voigt(V, kind).shape) == tuple(T.shape)
        assert tuple(it.to_mandel(T, kind).shape) == tuple(V.shape)
        assert tuple(it.from_mandel(V, kind).shape) == tuple(T.shape)
        assert tuple(it.rotate(T, R, kind).shape) == tuple(T.shape)
        assert tuple(it.rotate(V, R, kind).shape) == tuple(V.shape)  # Voigt in, Voigt out
        assert tuple(it.rotate(T, zeros(*batch, 3, 3), kind).shape) == tuple(T.shape)  # an empty batch of R


@pytest.mark.parametrize("where", [(), (1,)])
def test_rotate_refuses_non_finite_tensors(where):
    """NaN/inf in T used to come out rotated; the error names T (R's own check names R), like decompose."""
    C = random_tensor("elastic", np.random.default_rng(10), n=2)
    T = C[1].copy() if where == () else C.copy()
    T[(*where, 0, 0, 0, 0)] = np.nan
    index = re.escape(str(where))  # "()" or "(1,)"
    with pytest.raises(ValueError, match=rf"elastic tensor T contains NaN at batch index {index}"):
        it.rotate(T, it.random_rotation(seed=1), "elastic")
    V = it.to_voigt(C, "elastic")
    V[1, 2, 2] = np.inf
    with pytest.raises(ValueError, match=r"elastic tensor T contains inf at batch index \(1,\)"):
        it.rotate(V, it.random_rotation(seed=1), "elastic")
    with pytest.raises(ValueError, match="rotation matrix R contains NaN or inf"):
        it.rotate(C, np.full((3, 3), np.nan), "elastic")


def test_rotate_follows_the_tensor_type_and_dtype():
    """R is converted to T's array type, dtype and device (documented in rotate's docstring)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    C = random_tensor("elastic", rng, n=2)
    R = it.random_rotation(2, seed=2)
    ref = it.rotate(C, R, "elastic")
    for t_dtype in (torch.float32, torch.float64):
        T = torch.tensor(C, dtype=t_dtype)
        for Rin in (R, R.astype(np.float32), torch.tensor(R), torch.tensor(R, dtype=torch.float32)):
            out = it.rotate(T, Rin, "elastic")
            assert isinstance(out, torch.Tensor) and out.dtype == t_dtype
            np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-3 if t_dtype == torch.float32 else 1e-5)
    # numpy T: numpy out of T's dtype, whatever R is
    for Rin in (torch.tensor(R), torch.tensor(R, dtype=torch.float32), R.astype(np.float32)):
        out = it.rotate(C, Rin, "elastic")
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        np.testing.assert_allclose(out, ref, atol=1e-4)
    assert it.rotate(C.astype(np.float32), R, "elastic").dtype == np.float32
    # Voigt input and an axial kind (the det factor is converted too)
    V = torch.tensor(it.to_voigt(C, "elastic"), dtype=torch.float32)
    assert it.rotate(V, torch.tensor(R), "elastic").dtype == torch.float32
    A = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = it.rotate(A, -torch.eye(3, dtype=torch.float64), "ij=-ji", parity=-1)
    assert out.dtype == torch.float32 and torch.equal(out, -A)
    # gradients reach T and a torch R
    T = torch.tensor(C[0], requires_grad=True)
    Rt = torch.tensor(R[0], requires_grad=True)
    (it.rotate(T, Rt, "elastic") ** 2).sum().backward()
    assert T.grad is not None and Rt.grad is not None and torch.isfinite(Rt.grad).all()


def test_compose_of_a_grad_tensor_does_not_warn():
    """compose's finiteness check called float() on a tensor requiring grad, and the constant bases came
    from read-only numpy arrays: torch warned. torch warns once per process, so a fresh one is used."""
    pytest.importorskip("torch")
    code = (
        "import warnings, numpy as np, torch, irreptensor as it\n"
        "x = torch.randn(4, 21, dtype=torch.float64, requires_grad=True)\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('error')\n"
        "    for _ in range(2):\n"
        "        T = it.compose(x, 'elastic')\n"
        "        it.compose(x.float(), 'elastic')\n"
        "T.sum().backward()\n"
        "ref = it.basis('elastic').sum(1)\n"  # d(sum T)/dx = Q @ 1
        "assert np.allclose(x.grad.numpy(), np.broadcast_to(ref, (4, 21)), atol=1e-12)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok"], proc.stderr[-3000:]


def test_tiny_tensors_whose_squares_are_subnormal_pass_the_symmetry_check():
    """Entries of ~1e-160 have subnormal squares; the check must rescale, not report asymmetry
    (found by hypothesis in test_harmonic)."""
    for i, value in ((1, 5.12557265e-160), (3, 1e-170)):
        x = np.zeros(21)
        x[i] = value
        np.testing.assert_allclose(it.decompose(it.compose(x, "elastic"), "elastic"), x, rtol=1e-12, atol=1e-14 * value)
