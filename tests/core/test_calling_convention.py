"""One calling convention (docs/conventions.md, "Calling convention"): the array(s) first, then ``kind``
(required), ``parity`` and every other option keyword-only; the deprecated forms still work for one release,
with a DeprecationWarning that names the new form, and give the same numbers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import irreptensor as it
from irreptensor.crystal_symmetry import group_closure, group_projector

C = it.from_voigt(np.array([[165.7, 63.9, 60.1, 3.0, 0, 0], [63.9, 165.7, 63.9, 0, 0, 0],
                            [60.1, 63.9, 150.2, 0, 0, 0], [3.0, 0, 0, 79.6, 0, 0],
                            [0, 0, 0, 0, 70.1, 0], [0, 0, 0, 0, 0, 79.6]]), "elastic")
R = it.random_rotation(4, seed=3) * np.array([1.0, -1.0, 1.0, -1.0])[:, None, None]
OPS = group_closure([np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0])])  # D2

#: functions that take a kind, with the number of array arguments before it
KIND_SECOND = {
    "decompose": 1, "compose": 1, "to_voigt": 1, "from_voigt": 1, "to_mandel": 1, "from_mandel": 1,
    "harmonic_parts": 1, "block_norms": 1, "distance_from_isotropy": 1, "to_pymatgen": 1,
    "symmetry_class": 1, "symmetrize": 1, "symmetry_residual": 1, "rotate": 2, "wigner_D": 1,
}


def _public_functions():
    mods = [importlib.import_module(m.name) for m in pkgutil.walk_packages(it.__path__, "irreptensor.")]
    for mod in mods:
        for name, f in vars(mod).items():
            if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == mod.__name__:
                yield f"{mod.__name__}.{name}", f


def test_kind_comes_after_the_arrays_everywhere():
    seen = set()
    for qual, f in _public_functions():
        params = list(inspect.signature(f).parameters.values())
        names = [p.name for p in params]
        if "kind" not in names:
            continue
        i = names.index("kind")
        name = qual.rsplit(".", 1)[1]
        if name in ("required_kind", "kind_last"):  # the helpers that implement the deprecations
            continue
        if name in KIND_SECOND:
            seen.add(name)
            assert i == KIND_SECOND[name], f"{qual}: kind is argument {i}"
        else:  # a function about a kind itself (basis, irreps, ...) or a private-ish helper: kind first
            assert i in (0, 1), f"{qual}: kind is argument {i}"
        assert params[i].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, qual
        # no default kind: either required or the deprecated-default placeholder
        assert params[i].default in (inspect.Parameter.empty, it.kinds.KIND_REQUIRED), (
            f"{qual}: kind defaults to {params[i].default!r}")
        # after kind, only keyword-only options (symmetrize/symmetry_residual: the group ``ops`` is data)
        after = [p for p in params[i + 1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert [p.name for p in after] in ([], ["ops"]), f"{qual}: positional options {[p.name for p in after]}"
    assert seen == set(KIND_SECOND)


def test_parity_is_keyword_only_everywhere():
    found = 0
    for qual, f in _public_functions():
        p = inspect.signature(f).parameters.get("parity")
        if p is not None:
            found += 1
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, qual
    assert found >= 10
    for call in (lambda: it.irreps("ij=-ji", -1), lambda: it.basis("ij=-ji", False, -1),
                 lambda: it.blocks("ij=-ji", -1), lambda: it.dim("ij=-ji", -1), lambda: it.get_kind("ij=-ji", -1)):
        with pytest.raises(TypeError, match="positional argument"):
            call()
    assert it.irreps("ij=-ji", parity=-1) == "1x1o"


def test_options_are_keyword_only():
    with pytest.raises(TypeError, match="positional argument"):
        it.from_voigt(np.eye(6), "elastic", False)
    with pytest.raises(TypeError, match="tol is keyword-only"):
        it.symmetry_class(C, 1e-2)
    with pytest.raises(TypeError, match="positional argument"):
        it.random_rotation(2, False)


# ------------------------------------------------------------------------ wigner_D(R, kind)


@pytest.mark.parametrize("kind", ["elastic", "piezoelectric", "dielectric", it.get_kind("piezoelectric_d"), "1x0o+1x3e"])
def test_wigner_D_new_order_and_deprecated_old_order(kind):
    D = it.wigner_D(R, kind)
    n = 8 if kind == "1x0o+1x3e" else it.dim(kind)
    assert D.shape == (4, n, n)
    with pytest.warns(DeprecationWarning, match=r"wigner_D\(kind, R\) is deprecated.*call wigner_D\(R, kind\)"):
        old = it.wigner_D(kind, R)
    np.testing.assert_array_equal(old, D)
    np.testing.assert_array_equal(it.wigner_D(kind=kind, R=R), D)


def test_wigner_D_old_order_torch_and_parity():
    torch = pytest.importorskip("torch")
    Rt = torch.from_numpy(R)
    with pytest.warns(DeprecationWarning, match="wigner_D"):
        old = it.wigner_D("ij=-ji", Rt, parity=-1)
    new = it.wigner_D(Rt, "ij=-ji", parity=-1)
    assert torch.equal(old, new)
    np.testing.assert_allclose(new.numpy(), R, atol=1e-15)  # axial vector: D = R . det R . det R


def test_new_order_satisfies_the_defining_identity():
    x = it.decompose(C, "elastic")
    lhs = it.decompose(it.rotate(C, R, "elastic"), "elastic")
    np.testing.assert_allclose(lhs, it.wigner_D(R, "elastic") @ x, atol=1e-11)


def test_group_projector_old_order():
    P = group_projector(OPS, "elastic")
    with pytest.warns(DeprecationWarning, match=r"group_projector\(ops, kind\)"):
        np.testing.assert_array_equal(group_projector("elastic", OPS), P)


# ------------------------------------------------------------------------ missing kind


e = it.compose(np.random.default_rng(0).normal(size=18), "piezoelectric")
MISSING = {
    "decompose": (lambda: it.decompose(C), lambda: it.decompose(C, "elastic")),
    "compose": (lambda: it.compose(np.arange(21.0)), lambda: it.compose(np.arange(21.0), "elastic")),
    "rotate": (lambda: it.rotate(C, R), lambda: it.rotate(C, R, "elastic")),
    "to_voigt": (lambda: it.to_voigt(C), lambda: it.to_voigt(C, "elastic")),
    "from_voigt": (lambda: it.from_voigt(np.eye(6)), lambda: it.from_voigt(np.eye(6), "elastic")),
    "to_mandel": (lambda: it.to_mandel(C), lambda: it.to_mandel(C, "elastic")),
    "from_mandel": (lambda: it.from_mandel(np.eye(6), check=False), lambda: it.from_mandel(np.eye(6), "elastic")),
    "harmonic_parts": (lambda: it.harmonic_parts(C).coords, lambda: it.harmonic_parts(C, "elastic").coords),
    "block_norms": (lambda: it.block_norms(C)["4e"], lambda: it.block_norms(C, "elastic")["4e"]),
    "distance_from_isotropy": (lambda: it.distance_from_isotropy(C), lambda: it.distance_from_isotropy(C, "elastic")),
    "symmetrize": (lambda: it.symmetrize(C, ops=OPS), lambda: it.symmetrize(C, "elastic", OPS)),
    "symmetry_residual": (lambda: it.symmetry_residual(C, ops=OPS), lambda: it.symmetry_residual(C, "elastic", OPS)),
    "symmetry_class": (lambda: it.symmetry_class(C, tol=1e-3).projection,
                       lambda: it.symmetry_class(C, "elastic", tol=1e-3).projection),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_kind_warns_and_still_means_elastic(name):
    old, new = MISSING[name]
    with pytest.warns(DeprecationWarning, match=rf"irreptensor\.{name}\(\) without kind is deprecated.*'elastic'"):
        got = old()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(new()))


def test_to_pymatgen_missing_kind():
    pytest.importorskip("pymatgen")
    with pytest.warns(DeprecationWarning, match="to_pymatgen"):
        E = it.to_pymatgen(C)
    assert type(E) is type(it.to_pymatgen(C, "elastic"))


def test_missing_kind_warning_points_at_the_caller():
    with pytest.warns(DeprecationWarning) as record:
        it.rotate(C, R)
    assert record[0].filename == __file__


def test_deprecations_are_errors_in_these_tests():
    """tests/core/conftest.py: outside ``pytest.warns`` a deprecated call fails the test."""
    with pytest.raises(DeprecationWarning):
        it.decompose(C)
    with pytest.raises(DeprecationWarning):
        it.wigner_D("elastic", R)


C_ASYM = C + 1e-3 * np.arange(81.0).reshape(3, 3, 3, 3)  # lacks C_ijkl = C_jikl = C_klij
RENAMED_FLAG = {
    "decompose": lambda **kw: it.decompose(C_ASYM, "elastic", **kw),
    "harmonic_parts": lambda **kw: it.harmonic_parts(C_ASYM, "elastic", **kw).coords,
    "block_norms": lambda **kw: np.concatenate([np.ravel(v) for v in it.block_norms(C_ASYM, "elastic", **kw).values()]),
    "distance_from_isotropy": lambda **kw: it.distance_from_isotropy(C_ASYM, "elastic", **kw),
    "vrh_moduli": lambda **kw: it.vrh_moduli(C_ASYM, **kw).k_vrh,
    "universal_anisotropy": lambda **kw: it.universal_anisotropy(C_ASYM, **kw),
    "log_euclidean_anisotropy": lambda **kw: it.log_euclidean_anisotropy(C_ASYM, **kw),
    "symmetry_class": lambda **kw: it.symmetry_class(C_ASYM, "elastic", tol=1e-2, **kw).projection,
}


@pytest.mark.parametrize("name", sorted(RENAMED_FLAG))
def test_symmetrize_flag_is_symmetrize_indices(name):
    """One meaning per name: ``symmetrize`` is the point-group function; the index-symmetry flag is
    ``symmetrize_indices`` everywhere, the old keyword warning for one release with the same result."""
    call = RENAMED_FLAG[name]
    with pytest.raises(ValueError, match="symmetrize_indices=True"):
        call()
    new = call(symmetrize_indices=True)
    with pytest.warns(DeprecationWarning, match=rf"irreptensor\.{name}\(symmetrize=\.\.\.\) is deprecated") as rec:
        old = call(symmetrize=True)
    assert rec[0].filename == __file__
    np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    with pytest.raises(TypeError, match="both symmetrize_indices= and its deprecated spelling"):
        call(symmetrize=True, symmetrize_indices=True)
