"""Hypothesis strategies that draw the values themselves: tensors with an index symmetry, rotations.

The property tests draw these instead of an integer seed fed to ``np.random``, so hypothesis sees (and
shrinks) the actual numbers: zeros, a single non-zero entry, mixed signs, entries spanning many orders of
magnitude, tiny and huge (but finite) tensors.

Everything here is built with numpy alone (index orbits filled from drawn independent components,
rotations from drawn quaternions and unit vectors), never with the library under test, so the strategies
are an independent oracle for it.

Import from a test file as ``from strategies import ...`` (``tests/`` is on ``sys.path``, see
``tests/conftest.py``).
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

__all__ = [
    "FORMULAS",
    "MAGNITUDES",
    "dielectric_tensors",
    "elastic_tensors",
    "finite_arrays",
    "piezo_tensors",
    "power_of_two_scale",
    "quaternion_to_matrix",
    "quaternions",
    "rotations",
    "symmetric_tensors",
    "tensors_of_kind",
    "unit_vectors",
]

#: Bounds of the drawn entries: tiny (squares subnormal), ordinary and huge (squares overflow), all finite.
#: Every entry of one draw lies in ``[-M, M]`` for one ``M`` of these.
MAGNITUDES = (1e-160, 1e-6, 1.0, 1e3, 1e8, 1e160)

#: Index symmetry of the named kinds (the same permutation group for the kinds sharing a formula).
FORMULAS = {
    "dielectric": "ij=ji",
    "piezoelectric": "ijk=ikj",
    "piezo": "ijk=ikj",
    "piezoelectric_d": "ijk=ikj",
    "elastic": "ijkl=jikl=klij",
    "stiffness": "ijkl=jikl=klij",
    "compliance": "ijkl=jikl=klij",
}


def finite_arrays(shape, magnitudes=MAGNITUDES) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of ``shape`` whose entries are bounded finite floats in ``[-M, M]``, ``M`` drawn
    from ``magnitudes`` (subnormal entries excluded: they carry fewer bits than the tolerances assume)."""
    return st.sampled_from(tuple(magnitudes)).flatmap(
        lambda m: arrays(
            np.float64, shape,
            elements=st.floats(-m, m, allow_nan=False, allow_infinity=False, allow_subnormal=False),
        )
    )


@cache
def _orbits(formula: str) -> tuple[int, np.ndarray, np.ndarray]:
    """Index orbits of a formula such as ``"ijkl=jikl=klij"`` or ``"ij=-ji"``.

    Returns ``(n, index, sign)`` with ``index``, ``sign`` of shape ``(3,)*rank``: entry ``t`` of the
    tensor is ``sign[t] * c[index[t]]`` for ``n`` independent components ``c`` (``sign`` 0 where the
    symmetry forces the entry to vanish, e.g. the diagonal of an antisymmetric tensor).
    """
    terms = formula.replace(" ", "").split("=")
    base = terms[0]
    rank = len(base)
    gens = []
    for term in terms[1:]:
        s = -1 if term.startswith("-") else 1
        term = term.lstrip("-")
        if sorted(term) != sorted(base):
            raise ValueError(f"{formula!r}: {term!r} is not a permutation of {base!r}")
        gens.append((tuple(base.index(ch) for ch in term), s))
    index = np.full((3,) * rank, -1, dtype=np.int64)
    sign = np.zeros((3,) * rank, dtype=np.int64)
    n = 0
    for t in itertools.product(range(3), repeat=rank):
        if index[t] >= 0:
            continue
        # orbit of t under the generated group, with the sign of each member relative to t
        orbit = {t: 1}
        frontier = [t]
        vanishes = False
        while frontier:
            u = frontier.pop()
            for perm, s in gens:
                v = tuple(u[p] for p in perm)
                sv = orbit[u] * s
                if v in orbit:
                    vanishes |= orbit[v] != sv
                else:
                    orbit[v] = sv
                    frontier.append(v)
        for v, sv in orbit.items():
            index[v] = n
            sign[v] = 0 if vanishes else sv
        n += 1
    return n, index, sign


def symmetric_tensors(formula: str, batch: tuple[int, ...] = (), magnitudes=MAGNITUDES):
    """Tensors ``(*batch, 3, ..., 3)`` with exactly (bit for bit) the index symmetry of ``formula``,
    each independent component drawn (``finite_arrays``)."""
    n, index, sign = _orbits(formula)

    def fill(c: np.ndarray) -> np.ndarray:
        return c[..., index] * sign

    return finite_arrays((*batch, n), magnitudes).map(fill)


def dielectric_tensors(batch: tuple[int, ...] = (), magnitudes=MAGNITUDES):
    """Symmetric rank-2 tensors ``eps_ij = eps_ji``."""
    return symmetric_tensors("ij=ji", batch, magnitudes)


def piezo_tensors(batch: tuple[int, ...] = (), magnitudes=MAGNITUDES):
    """Rank-3 tensors with ``e_ijk = e_ikj`` (18 independent components)."""
    return symmetric_tensors("ijk=ikj", batch, magnitudes)


def elastic_tensors(batch: tuple[int, ...] = (), magnitudes=MAGNITUDES):
    """Rank-4 tensors with the minor and major symmetries ``C_ijkl = C_jikl = C_ijlk = C_klij`` (21)."""
    return symmetric_tensors("ijkl=jikl=klij", batch, magnitudes)


def tensors_of_kind(kind: str, batch: tuple[int, ...] = (), magnitudes=MAGNITUDES):
    """Tensors of a named kind (``FORMULAS``) or of an index formula."""
    return symmetric_tensors(FORMULAS.get(kind, kind), batch, magnitudes)


def unit_vectors() -> st.SearchStrategy[np.ndarray]:
    """Unit 3-vectors, normalized from drawn vectors of norm >= 0.1 (no seeds)."""
    return arrays(np.float64, 3, elements=st.floats(-1, 1, allow_nan=False, allow_subnormal=False)).filter(
        lambda v: np.linalg.norm(v) >= 0.1
    ).map(lambda v: v / np.linalg.norm(v))


def quaternions() -> st.SearchStrategy[np.ndarray]:
    """Unit quaternions ``(w, x, y, z)`` normalized from drawn 4-vectors of norm >= 0.1."""
    return arrays(np.float64, 4, elements=st.floats(-1, 1, allow_nan=False, allow_subnormal=False)).filter(
        lambda q: np.linalg.norm(q) >= 0.1
    ).map(lambda q: q / np.linalg.norm(q))


def quaternion_to_matrix(q) -> np.ndarray:
    """The proper rotation of a (not necessarily unit) quaternion ``(w, x, y, z)``."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotations(proper: bool | None = None) -> st.SearchStrategy[np.ndarray]:
    """Orthogonal 3x3 matrices from a drawn quaternion; improper ones (det -1) are that rotation times
    either the inversion ``-1`` or the mirror ``1 - 2 n n^T`` across the plane of a drawn unit normal.

    ``proper=None`` draws both kinds.
    """
    proper_st = st.builds(quaternion_to_matrix, quaternions())
    inversion = proper_st.map(lambda R: -R)
    mirror = st.builds(lambda R, n: R @ (np.eye(3) - 2.0 * np.outer(n, n)), proper_st, unit_vectors())
    improper_st = st.one_of(inversion, mirror)
    if proper is None:
        return st.one_of(proper_st, improper_st)
    return proper_st if proper else improper_st


def power_of_two_scale(*arrays_) -> float:
    """A power of two ``s`` near the largest ``|entry|`` (1 for all-zero input): dividing by it is exact
    and keeps sums of squares of huge or tiny arrays finite and normal, so norms can be compared."""
    m = max((float(np.abs(a).max()) if np.size(a) else 0.0) for a in arrays_)
    if m == 0.0 or not np.isfinite(m):
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(m)[1])))
