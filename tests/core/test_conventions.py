"""Every coordinate formula stated in docs/conventions.md, checked on random tensors in float64."""

import numpy as np
import pytest

import irreptensor as it

rng = np.random.default_rng(12345)
EPS = np.zeros((3, 3, 3))
EPS[0, 1, 2] = EPS[1, 2, 0] = EPS[2, 0, 1] = 1.0
EPS[0, 2, 1] = EPS[2, 1, 0] = EPS[1, 0, 2] = -1.0


def dev(s):
    return s - np.trace(s) / 3 * np.eye(3)


def Y2(s):
    """The documented l=2 coordinates of a symmetric traceless matrix."""
    return np.array([np.sqrt(2) * s[0, 2], np.sqrt(2) * s[0, 1], (2 * s[1, 1] - s[0, 0] - s[2, 2]) / np.sqrt(6),
                     np.sqrt(2) * s[1, 2], (s[2, 2] - s[0, 0]) / np.sqrt(2)])


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, np.abs(b).max()))


def test_y2_is_the_dielectric_2e_block():
    s = rng.normal(size=(3, 3))
    s = dev(s + s.T)
    close(it.decompose(s, "dielectric")[1:], Y2(s))


def test_dielectric_coordinates():
    e = rng.normal(size=(3, 3))
    e = e + e.T
    x = it.decompose(e, "dielectric")
    close(x[0], np.trace(e) / np.sqrt(3))
    close(x[1:], Y2(dev(e)))


def test_elastic_coordinates():
    A = rng.normal(size=(6, 6))
    C = it.from_voigt(A + A.T, "elastic")
    x = it.decompose(C, "elastic")
    iijj, ijij = np.einsum("iijj->", C), np.einsum("ijij->", C)
    KV, GV = iijj / 9, (3 * ijij - iijj) / 30
    close(x[0], iijj / 3)
    close(x[0], 3 * KV)
    close(x[1], (ijij - iijj / 3) / np.sqrt(5))
    close(x[1], 2 * np.sqrt(5) * GV)
    d, v = np.einsum("ijkk->ij", C), np.einsum("ikjk->ij", C)
    close(x[2:7], np.sqrt(6) / 3 * Y2(dev(d)))
    close(x[7:12], 2 * np.sqrt(21) / 21 * Y2(3 * dev(v) - 2 * dev(d)))
    # 4e: the harmonic part H = C minus its isotropic and deviatoric parts; |4e| = |H|_F
    x_h = np.zeros(21)
    x_h[12:] = x[12:]
    H = it.compose(x_h, "elastic")
    close(np.einsum("ijkk->ij", H), np.zeros((3, 3)))
    for perm in [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3, 2), (2, 1, 0, 3)]:
        close(H, H.transpose(perm))
    close(np.linalg.norm(x[12:]), np.linalg.norm(H))


def test_piezoelectric_coordinates():
    e = it.from_voigt(rng.normal(size=(3, 6)), "piezoelectric")
    x = it.decompose(e, "piezoelectric")
    u, w = np.einsum("ikk->i", e), np.einsum("kki->i", e)
    close(x[0:3], w / np.sqrt(2))
    close(x[3:6], (w - 2 * u) / np.sqrt(10))
    A = np.einsum("pij,ijk->pk", EPS, e)
    close(x[6:11], np.sqrt(6) / 3 * Y2(dev((A + A.T) / 2)))
    x3 = np.zeros(18)
    x3[11:] = x[11:]
    T3 = it.compose(x3, "piezoelectric")
    for perm in [(1, 0, 2), (0, 2, 1)]:
        close(T3, T3.transpose(perm))
    close(np.einsum("ikk->i", T3), np.zeros(3))


def test_l1_basis_is_xyz():
    R = it.random_rotation(seed=3)
    close(it.wigner_D(R, "ij=-ji", parity=-1), R)


@pytest.mark.parametrize("kind", ["dielectric", "piezoelectric", "elastic"])
def test_rows_unit_and_orthogonal(kind):
    Q = it.basis(kind)
    close(Q @ Q.T, np.eye(len(Q)))
