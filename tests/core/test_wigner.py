"""Tests of ``wigner_D``: the quaternion-polynomial tables, agreement with e3nn and with the ``Y_l``
recursion, group properties, array types, autograd and input errors.

References: e3nn's ``Irreps.D_from_matrix`` (the convention to match; it goes through Euler angles and is
itself only accurate to ~1e-14) and the recursion ``irreptensor.wigner._chain`` (an independent exact
construction, ``D^l = Y_l R^{(x)l} Y_l^T`` built recursively), which is the tight reference.
"""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import irreptensor as it
from irreptensor import wigner as W
from strategies import rotations, tensors_of_kind
from irreptensor.basis import irreps_blocks
from irreptensor.wigner_tables import TABLE_PATH, monomial_exponents, quaternion_coefficients

torch = pytest.importorskip("torch")
o3 = pytest.importorskip("e3nn.o3")

KINDS = ["elastic", "piezoelectric", "dielectric", "ijk=jik=kji"]


def _e3nn_D(irreps: str, R: np.ndarray) -> np.ndarray:
    """e3nn's matrices in float64 (its constants follow torch's default dtype, so switch it for the call)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.Irreps(irreps).D_from_matrix(torch.from_numpy(np.asarray(R, dtype=np.float64))).numpy()
    finally:
        torch.set_default_dtype(old)


def _recursion_D(irreps: str, R: np.ndarray) -> np.ndarray:
    """The reference: the Y_l recursion on the proper part, parity by the det factor (float64)."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    det = np.sign(np.linalg.det(R))
    blks = irreps_blocks(irreps)
    Ds = W._chain(R * det[:, None, None], max(b.l for b in blks))
    dim = blks[-1].stop
    out = np.zeros((len(R), dim, dim))
    for b in blks:
        out[:, b.start:b.stop, b.start:b.stop] = Ds[b.l] * (det[:, None, None] if b.parity == -1 else 1.0)
    return out


def _axis_angle(axis, angle) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)


def _special_rotations(gimbal: bool = True) -> np.ndarray:
    """Identity, rotations about the coordinate axes, rotations by pi about random axes; with ``gimbal``
    also the orientations where Euler-angle routes (e3nn's) lose digits: tiny angles and pi - tiny about
    the axes and random axes (e3nn is off by up to ~4e-9 there)."""
    rng = np.random.default_rng(7)
    Rs = [np.eye(3)]
    for axis in np.eye(3):
        for angle in (0.3, np.pi / 2, 2.0, np.pi) + ((1e-9, np.pi - 1e-7) if gimbal else ()):
            Rs.append(_axis_angle(axis, angle))
    for _ in range(20):
        axis = rng.normal(size=3)
        for angle in (np.pi,) + ((np.pi - 1e-6, np.pi - 1e-12, 1e-12) if gimbal else ()):
            Rs.append(_axis_angle(axis, angle))
    return np.array(Rs)


def _signed_permutations() -> np.ndarray:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            P = np.zeros((3, 3))
            for i, (j, s) in enumerate(zip(perm, signs)):
                P[i, j] = s
            out.append(P)
    return np.array(out)


# ------------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("l", [1, 2, 3, 4])
def test_table_is_the_exact_derivation(l):
    """The stored coefficients (float, exact string, 40 digits) are re-derived identically."""
    stored = json.loads(TABLE_PATH.read_text())["degrees"][str(l)]
    fresh = quaternion_coefficients(l)
    assert stored["monomials"] == fresh["monomials"] == [list(e) for e in monomial_exponents(2 * l)]
    assert stored["entries"] == fresh["entries"]


def _exact_value(s: str) -> tuple[Fraction, int]:
    if "*sqrt(" in s:
        num, rad = s.split("*sqrt(")
        return Fraction(num), int(rad.rstrip(")"))
    return Fraction(s), 1


@pytest.mark.parametrize("l", [2, 4])
def test_table_floats_are_correctly_rounded(l):
    """Each float64 is the nearest double to its exact ``p/r*sqrt(t)``; the decimal agrees to 40 digits."""
    import mpmath

    entries = json.loads(TABLE_PATH.read_text())["degrees"][str(l)]["entries"]
    assert entries
    with mpmath.workdps(80):
        for _, _, f, exact, dec in entries:
            q, t = _exact_value(exact)
            v = mpmath.mpf(q.numerator) / q.denominator * mpmath.sqrt(t)
            lo, hi = math.nextafter(f, -math.inf), math.nextafter(f, math.inf)
            # nearest: |v - f| <= half the gap to either neighbour
            assert abs(v - f) <= abs(mpmath.mpf(hi) - f) / 2 and abs(v - f) <= abs(f - mpmath.mpf(lo)) / 2
            assert abs(mpmath.mpf(dec) - v) <= abs(v) * mpmath.mpf(10) ** -39


def test_table_polynomials_reproduce_recursion_in_exact_arithmetic():
    """At an integer quaternion the homogeneous polynomials equal ``Y R(q)^{(x)l} Y^T`` exactly (l = 2)."""
    import sympy as sp

    q = (2, -1, 3, 5)  # not unit: R(q) = |q|^2 * rotation, D^l scales by |q|^(2l)
    w, x, y, z = q
    Rq = sp.Matrix([[w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z]])
    Y = it.basis("ij=ji", exact=True)[-5:, :]
    ref = Y * sp.kronecker_product(Rq, Rq) * Y.T
    table = json.loads(TABLE_PATH.read_text())["degrees"]["2"]
    got = sp.zeros(5, 5)
    for r, col, _, exact, _ in table["entries"]:
        e = table["monomials"][r]
        frac, t = _exact_value(exact)
        got[col // 5, col % 5] += sp.Rational(frac.numerator, frac.denominator) * sp.sqrt(t) * (
            w ** e[0] * x ** e[1] * y ** e[2] * z ** e[3])
    assert sp.simplify(got - ref) == sp.zeros(5, 5)


# ------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("proper", [True, False])
def test_matches_e3nn(kind, proper):
    R = it.random_rotation(200, proper=proper, seed=11)
    D = it.wigner_D(R, kind)
    ref = _e3nn_D(it.irreps(kind), R)
    assert D.shape == ref.shape == (200, it.dim(kind), it.dim(kind))
    assert np.abs(D - ref).max() <= 1e-13


@pytest.mark.parametrize("irreps", ["1x1o+1x2e+1x3o+1x4e", "1x0o+1x1e+1x2o+1x3e+1x4o", "1x5o+1x5e"])
def test_matches_e3nn_every_degree_and_parity(irreps):
    """Tabulated degrees 1..4 of both parities, and the recursion fallback (l = 5)."""
    R = np.concatenate([it.random_rotation(50, seed=12), it.random_rotation(50, proper=False, seed=13)])
    assert np.abs(it.wigner_D(R, irreps) - _e3nn_D(irreps, R)).max() <= 1e-13


def test_tabulated_path_matches_recursion_on_special_rotations():
    """Near-180-degree, tiny-angle, coordinate-axis rotations and the identity: the polynomial path and the
    recursion agree to rounding (both exact constructions; no Euler angles involved)."""
    irreps = "1x1o+1x2e+1x3o+1x4e"
    R = np.concatenate([_special_rotations(), it.random_rotation(300, seed=3)])
    for Rs in (R, -R):
        assert np.abs(it.wigner_D(Rs, irreps) - _recursion_D(irreps, Rs)).max() <= 1.5e-14
    D = it.wigner_D(np.eye(3), irreps)
    assert np.abs(D - np.eye(D.shape[-1])).max() <= 1e-15


def test_special_rotations_match_e3nn():
    """Away from e3nn's gimbal-lock orientations (where the recursion test above is the reference)."""
    irreps = it.irreps("elastic")
    R = _special_rotations(gimbal=False)
    for Rs in (R, -R):
        assert np.abs(it.wigner_D(Rs, "elastic") - _e3nn_D(irreps, Rs)).max() <= 1e-13


def test_signed_permutations_are_exact():
    """The 48 signed permutation matrices (cubic point group m-3m): the pair products are exact dyadic
    numbers, so D is the exact matrix rounded (recursion agrees to ~1 ulp) and orthogonal to ~1e-15."""
    irreps = "1x0o+1x1o+1x1e+1x2e+1x2o+1x3o+1x4e+1x4o"
    P = _signed_permutations()
    D = it.wigner_D(P, irreps)
    assert np.abs(D - _recursion_D(irreps, P)).max() <= 2e-15
    eye = np.eye(D.shape[-1])
    assert np.abs(D @ np.swapaxes(D, 1, 2) - eye).max() <= 2e-15
    assert np.abs(D - _e3nn_D(irreps, P)).max() <= 1e-13
    # the group is closed: D(P_i P_j) = D(P_i) D(P_j)
    i, j = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    prod = it.wigner_D(P[i.ravel()] @ P[j.ravel()], irreps)
    assert np.abs(prod - D[i.ravel()] @ D[j.ravel()]).max() <= 4e-15


# ------------------------------------------------------------------------------------- group properties


@pytest.mark.parametrize("kind", KINDS)
def test_homomorphism_and_orthogonality(kind):
    rng = np.random.default_rng(5)
    R1 = it.random_rotation(300, seed=1) * rng.choice([-1.0, 1.0], size=(300, 1, 1))
    R2 = it.random_rotation(300, seed=2) * rng.choice([-1.0, 1.0], size=(300, 1, 1))
    D1, D2 = it.wigner_D(R1, kind), it.wigner_D(R2, kind)
    assert np.abs(it.wigner_D(R1 @ R2, kind) - D1 @ D2).max() <= 1e-13
    eye = np.eye(D1.shape[-1])
    assert np.abs(D1 @ np.swapaxes(D1, 1, 2) - eye).max() <= 5e-14
    # transpose of a rotation is its inverse
    assert np.abs(it.wigner_D(np.swapaxes(R1, 1, 2), kind) - np.swapaxes(D1, 1, 2)).max() <= 2e-14


def test_parity_blocks_follow_det():
    """Inversion -1 acts as +1 on e irreps and -1 on o irreps."""
    D = it.wigner_D(-np.eye(3), "1x0e+1x0o+1x1o+1x1e+1x4e+1x4o")
    signs = np.concatenate([[1, -1], [-1] * 3, [1] * 3, [1] * 9, [-1] * 9])
    assert np.array_equal(D, np.diag(signs).astype(float))


# ------------------------------------------------------------------------------------- batching, chunking


def test_batch_shapes_and_empty():
    R = it.random_rotation(24, seed=4).reshape(2, 3, 4, 3, 3)
    D = it.wigner_D(R, "elastic")
    assert D.shape == (2, 3, 4, 21, 21)
    assert np.array_equal(D.reshape(24, 21, 21), it.wigner_D(R.reshape(24, 3, 3), "elastic"))
    assert it.wigner_D(np.eye(3), "elastic").shape == (21, 21)
    assert it.wigner_D(np.zeros((0, 3, 3)), "elastic").shape == (0, 21, 21)


@pytest.mark.parametrize("chunk,threads", [(256, 1), (300, 1), (512, 2), (256, None), (1 << 20, 1)])
def test_chunking_and_threads_do_not_change_the_result(chunk, threads):
    """Ragged chunks (1000 = 3 * 256 + 232), several worker threads: bit-identical to one block."""
    R = it.random_rotation(1000, proper=False, seed=9)
    ref = it.wigner_D(R, "piezoelectric", chunk=1 << 20, threads=1)
    assert np.array_equal(it.wigner_D(R, "piezoelectric", chunk=chunk, threads=threads), ref)


# ------------------------------------------------------------------------------------- array types, autograd


def test_numpy_float32():
    R = it.random_rotation(50, seed=6)
    D32 = it.wigner_D(R.astype(np.float32), "elastic")
    assert D32.dtype == np.float32
    assert np.abs(D32 - it.wigner_D(R, "elastic")).max() <= 2e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_in_torch_out(dtype):
    dt = getattr(torch, dtype)
    R = it.random_rotation(40, proper=False, seed=8)
    Rt = torch.from_numpy(R).to(dt)
    D = it.wigner_D(Rt, "elastic")
    assert isinstance(D, torch.Tensor) and D.dtype == dt and D.device == Rt.device
    assert D.shape == (40, 21, 21)
    tol = 1e-14 if dtype == "float64" else 2e-6
    assert np.abs(D.double().numpy() - it.wigner_D(R, "elastic")).max() <= tol
    # input that needs a graph takes the torch-ops path (the one used on GPUs): same values
    Dg = it.wigner_D(Rt.clone().requires_grad_(True), "elastic")
    assert Dg.dtype == dt and Dg.requires_grad
    assert np.abs(Dg.detach().double().numpy() - it.wigner_D(R, "elastic")).max() <= tol
    Dg5 = it.wigner_D(Rt.clone().requires_grad_(True), "1x5o").detach()
    assert np.abs(Dg5.double().numpy() - it.wigner_D(R, "1x5o")).max() <= 10 * tol


def _rodrigues(v):
    """Rotation matrices (torch, differentiable) from rotation vectors v (n, 3)."""
    theta = v.norm(dim=-1, keepdim=True)[..., None]
    k = v / v.norm(dim=-1, keepdim=True)
    zero = torch.zeros_like(k[:, 0])
    K = torch.stack([torch.stack([zero, -k[:, 2], k[:, 1]], -1),
                     torch.stack([k[:, 2], zero, -k[:, 0]], -1),
                     torch.stack([-k[:, 1], k[:, 0], zero], -1)], -2)
    eye = torch.eye(3, dtype=v.dtype).expand_as(K)
    return eye + torch.sin(theta) * K + (1 - torch.cos(theta)) * (K @ K)


@pytest.mark.parametrize("irreps", ["1x0e+1x1o+1x2e+1x3o+1x4e", "1x5e"])
def test_autograd_gradcheck(irreps):
    """Gradients through a rotation-vector parametrization, one proper and one improper rotation. The
    output is contracted with fixed random weights (3 numbers per rotation) to keep gradcheck's Jacobian
    small; every entry of D still enters."""
    v = torch.tensor([[0.3, -1.1, 0.7], [2.9, 0.1, -0.2]], dtype=torch.float64, requires_grad=True)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None, None]
    d = irreps_blocks(irreps)[-1].stop
    Wt = torch.from_numpy(np.random.default_rng(0).normal(size=(3, d, d)))
    assert torch.autograd.gradcheck(
        lambda v: torch.einsum("nij,kij->nk", it.wigner_D(_rodrigues(v) * sign, irreps), Wt), (v,))


def test_autograd_matches_finite_differences_of_numpy():
    v = torch.tensor([[0.4, 0.5, -0.6]], dtype=torch.float64, requires_grad=True)
    D = it.wigner_D(_rodrigues(v), "elastic")
    (g,) = torch.autograd.grad(D[0, 12:, 12:].sum(), v)
    eps = 1e-6
    fd = []
    for i in range(3):
        dv = np.zeros(3)
        dv[i] = eps
        plus = it.wigner_D(_rodrigues(torch.from_numpy(v.detach().numpy() + dv)).numpy(), "elastic")
        minus = it.wigner_D(_rodrigues(torch.from_numpy(v.detach().numpy() - dv)).numpy(), "elastic")
        fd.append((plus[0, 12:, 12:].sum() - minus[0, 12:, 12:].sum()) / (2 * eps))
    assert np.abs(g.numpy()[0] - np.array(fd)).max() <= 1e-7


# ------------------------------------------------------------------------------------- errors


def test_non_orthogonal_raises():
    R = it.random_rotation(5, seed=1)
    R[3] *= 1.01
    with pytest.raises(ValueError, match=r"R is not orthogonal: max \|R R\^T - 1\| = 2\.01\de-02 at batch index \(.*3"):
        it.wigner_D(R, "elastic")


@pytest.mark.parametrize("shape", [(3,), (3, 4), (5, 2, 3), (4, 4)])
def test_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match=r"must have shape \(\.\.\., 3, 3\)"):
        it.wigner_D(np.zeros(shape), "elastic")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises(bad):
    R = it.random_rotation(4, seed=2)
    R[2, 1, 0] = bad
    with pytest.raises(ValueError, match=r"contains NaN or inf at batch index \(.*2"):
        it.wigner_D(R, "elastic")
    with pytest.raises(ValueError, match="NaN or inf"):
        it.wigner_D(torch.from_numpy(R), "elastic")


def test_huge_finite_entries_are_reported_as_non_orthogonal():
    with pytest.raises(ValueError, match="R is not orthogonal: max .* = inf"):
        it.wigner_D(np.eye(3) * 1e200, "elastic")


def test_check_rotation_det_and_tolerance():
    from irreptensor.rotation import check_rotation

    R = np.concatenate([it.random_rotation(10, seed=3), -it.random_rotation(10, seed=4)])
    flat, det, batch = check_rotation(R)
    assert np.array_equal(det, np.sign(np.linalg.det(R))) and batch == (20,)
    check_rotation(np.eye(3) + 5e-7 * np.diag([1.0, 0, 0]) / 2)  # within the default tol 1e-6
    with pytest.raises(ValueError, match="tolerance 1e-08"):
        check_rotation(np.eye(3) + 1e-7, tol=1e-8)


# ------------------------------------------------------------------------------------- equivariance property


@settings(max_examples=60, deadline=None)
@given(kind_T=st.sampled_from(["elastic", "piezoelectric", "dielectric", "ijk=jik=kji"]).flatmap(
    lambda k: st.tuples(st.just(k), tensors_of_kind(k))), R=rotations())
def test_equivariance_property(kind_T, R):
    """decompose(rotate(T, R)) == wigner_D(R) @ decompose(T) to <= 1e-13 relative; drawn tensors (tiny to
    huge entries) and drawn rotations (quaternions, times an inversion or a mirror for improper ones)."""
    kind, T = kind_T
    xs = it.decompose(T, kind)
    lhs = it.decompose(it.rotate(T, R, kind), kind)
    rhs = it.wigner_D(R, kind) @ it.decompose(T, kind)
    assert np.abs(lhs - rhs).max() <= 1e-13 * np.abs(xs).max()
