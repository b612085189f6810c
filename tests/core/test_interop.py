"""pymatgen interop (tensors in and out) and the worked examples of docs/examples_core.md."""

import gzip
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import irreptensor as it
from irreptensor.crystal_symmetry import point_group_ops, symmetrize, symmetry_residual
from irreptensor.harmonic import harmonic_parts
from irreptensor.interop import from_pymatgen, is_pymatgen_tensor, to_pymatgen
from irreptensor.invariants import (
    block_norms,
    distance_from_isotropy,
    log_euclidean_anisotropy,
    universal_anisotropy,
    vrh_moduli,
)
from irreptensor.symmetry_class import symmetry_class

pytest.importorskip("pymatgen")  # optional dependency of the core: this whole file is about it

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "irreptensor_ml" / "datasets"
DOC = ROOT / "docs" / "examples_core.md"
DIM = {"elastic": 21, "compliance": 21, "piezoelectric": 18, "piezoelectric_d": 18, "dielectric": 6}


def _random(kind, n=None, seed=0):
    rng = np.random.default_rng(seed)
    return it.compose(rng.normal(size=(DIM[kind],) if n is None else (n, DIM[kind])), kind)


@pytest.mark.parametrize("kind,cls", [("elastic", "ElasticTensor"), ("compliance", "ComplianceTensor"),
                                      ("piezoelectric", "PiezoTensor"), ("dielectric", "Tensor"),
                                      ("piezoelectric_d", "Tensor")])
def test_round_trip(kind, cls):
    T = _random(kind, seed=1)
    P = to_pymatgen(T, kind)
    assert type(P).__name__ == cls and is_pymatgen_tensor(P)
    back, k = from_pymatgen(P)
    np.testing.assert_array_equal(back, T)
    if kind != "piezoelectric_d":  # a plain rank-3 Tensor is read as the e form
        assert k == kind
    if hasattr(P, "voigt") and kind != "piezoelectric_d":
        np.testing.assert_allclose(np.array(P.voigt), it.to_voigt(T, kind), atol=1e-15)  # same conventions
    # Voigt input gives the same object
    np.testing.assert_allclose(np.array(to_pymatgen(it.to_voigt(T, kind), kind)), T, atol=1e-15)


def test_batch_gives_list_and_pymatgen_voigt_constructors_agree():
    from pymatgen.analysis.elasticity import ComplianceTensor, ElasticTensor
    from pymatgen.analysis.piezo import PiezoTensor

    T = _random("elastic", 4, seed=2).reshape(2, 2, 3, 3, 3, 3)
    out = to_pymatgen(T, "elastic")
    assert isinstance(out, list) and len(out) == 4
    np.testing.assert_array_equal(np.array(out[3]), T[1, 1])
    V = it.to_voigt(T[0, 0], "elastic")
    np.testing.assert_allclose(np.array(ElasticTensor.from_voigt(V)), T[0, 0], atol=1e-15)
    S = it.to_voigt(T[0, 0], "compliance")
    np.testing.assert_allclose(np.array(ComplianceTensor.from_voigt(S)), T[0, 0], atol=1e-15)
    e = _random("piezoelectric", seed=3)
    np.testing.assert_allclose(np.array(PiezoTensor.from_voigt(it.to_voigt(e, "piezoelectric"))), e, atol=1e-15)


def test_pymatgen_inputs_accepted_everywhere():
    from pymatgen.analysis.elasticity import ElasticTensor
    from pymatgen.analysis.piezo import PiezoTensor

    C = _random("elastic", seed=4) + it.from_voigt(np.eye(6) * 10, "elastic")
    E = ElasticTensor(C)
    np.testing.assert_array_equal(it.decompose(E, "elastic"), it.decompose(C, "elastic"))
    np.testing.assert_allclose(it.rotate(E, np.eye(3), "elastic"), C)
    assert harmonic_parts(E, "elastic").bulk_modulus == pytest.approx(E.k_voigt)
    assert vrh_moduli(E).g_reuss == pytest.approx(E.g_reuss)
    assert symmetry_class(E, "elastic").name == symmetry_class(C, "elastic").name
    ops = [np.diag([-1.0, -1.0, 1.0])]
    np.testing.assert_array_equal(symmetrize(E, "elastic", ops), symmetrize(C, "elastic", ops))
    e = PiezoTensor(_random("piezoelectric", seed=5))
    assert block_norms(e, "piezoelectric")["3o"] == pytest.approx(block_norms(np.array(e), "piezoelectric")["3o"])


def test_errors():
    with pytest.raises(ValueError, match="expected a pymatgen Tensor"):
        from_pymatgen(np.zeros((3, 3)))
    from pymatgen.core.tensors import Tensor

    with pytest.raises(ValueError, match="no named irreptensor kind"):
        from_pymatgen(Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="named kinds only"):
        to_pymatgen(np.zeros((3, 3, 3)), "ijk=jik=kji")
    with pytest.raises(ValueError, match="trailing shape"):
        to_pymatgen(np.zeros((4, 4)), "elastic")


# ---------------------------------------------------------------- docs/examples_core.md


def _record(name, mid):
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["material_id"] == mid:
                return r
    raise AssertionError(f"{mid} not in {name}")


ROUNDING_LEVEL = 1e-12
"""A number shown as zero in the docs is zero up to float64 rounding: ``|recomputed| <= ROUNDING_LEVEL * scale``
(``scale`` = the tensor's Frobenius norm for quantities in its units, 1 for relative ones). Rounding gives
~1e-16 here, and the value differs by platform and BLAS, so it is never compared as text."""

_NUMBER = re.compile(r"^[-+]?\d+(?:\.(\d*))?(?:[eE]([-+]?\d+))?$")


def _doc_number_matches(text, value, scale=1.0):
    """Whether the docs' ``text`` (fixed point or scientific) is ``value`` correctly rounded.

    A nonzero number: ``|value - float(text)|`` at most half a unit in its last shown digit (plus a few ulps,
    so that a value on the rounding boundary is not decided by the last bit). A zero: ``|value|`` at rounding
    level (:data:`ROUNDING_LEVEL`); a small but real value must be shown with enough digits.
    """
    m = _NUMBER.match(text.strip())
    assert m, f"not a number: {text!r}"
    shown = float(text)
    if shown == 0.0:
        return abs(value) <= ROUNDING_LEVEL * scale
    half_unit = 0.5 * 10.0 ** (int(m.group(2) or 0) - len(m.group(1) or ""))
    return abs(value - shown) <= half_unit + 4 * np.spacing(abs(shown))


def test_doc_number_comparison():
    """Numbers are compared as numbers: a rounding-level residual matches a documented 0 on any machine."""
    for recomputed in (0.0, -0.0, 1.3e-16, -2e-16, 1.25e-16):
        assert _doc_number_matches("0.0e+00", recomputed) and _doc_number_matches("0.0000", recomputed)
    assert not _doc_number_matches("0.0e+00", 1e-5)  # a real (if small) residual is not "0"
    assert not _doc_number_matches("0.0000", 3e-5, scale=1.8)
    assert _doc_number_matches("0.0000", 1e-12, scale=2.0)
    assert _doc_number_matches("232.48", 232.4849999) and _doc_number_matches("232.48", 232.475)
    assert not _doc_number_matches("232.48", 232.4851) and not _doc_number_matches("232.48", 232.4749)
    assert _doc_number_matches("-25.86", -25.8551) and not _doc_number_matches("-25.86", 25.86)
    assert _doc_number_matches("1.4e-04", 1.449e-4) and not _doc_number_matches("1.4e-04", 1.46e-4)
    assert _doc_number_matches("12", 12.4) and not _doc_number_matches("12", 12.6)


def _check_row(label, shown, expected):
    """``expected``: a string (a name or a count: compared as text) or ``(values, scale)`` (numbers)."""
    if isinstance(expected, str):
        assert shown == expected, f"{label}: docs say {shown!r}, recomputed {expected!r}"
        return
    values, scale = expected
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    parts = [t.strip() for t in shown.split(",")]
    assert len(parts) == len(values), f"{label}: docs show {len(parts)} numbers, recomputed {len(values)}"
    for text, v in zip(parts, values):
        zero = f" (a shown 0 must be at most {ROUNDING_LEVEL:g} x {scale:.3g})" if float(text) == 0.0 else ""
        assert _doc_number_matches(text, float(v), scale), (
            f"{label}: docs say {shown!r}, recomputed {', '.join(f'{u:.6g}' for u in values)}{zero}"
        )


def _rows(doc):
    """``| label | value |`` rows of the markdown tables -> {label: value string}."""
    out = {}
    for m in re.finditer(r"^\| ([^|]+?) \| `?([^|`]+?)`? \|$", doc, flags=re.M):
        out[m.group(1).strip()] = m.group(2).strip()
    return out


def test_docs_examples_numbers():
    """Every number in the tables of docs/examples_core.md is recomputed here and compared as a number:
    within half a unit of its last shown digit, and a shown 0 at rounding level (see ``_doc_number_matches``).
    Names and counts are compared as text. Rows are ``label: name`` or ``label: (values, scale)``."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    rows = _rows(DOC.read_text())
    expected = {}

    r = _record("elastic_mp2015", "mp-1143")  # Al2O3 corundum, R-3c
    C = np.array(r["tensor"])
    p = harmonic_parts(C, "elastic")
    m = vrh_moduli(C)
    n = block_norms(C, "elastic")
    sc = symmetry_class(C, "elastic", tol=1e-2)
    gpa = np.linalg.norm(C)  # the scale of GPa quantities
    expected.update({
        "Al2O3 K_V (GPa)": (p.bulk_modulus, gpa), "Al2O3 G_V (GPa)": (p.shear_modulus, gpa),
        "Al2O3 K_R (GPa)": (m.k_reuss, gpa), "Al2O3 G_R (GPa)": (m.g_reuss, gpa),
        "Al2O3 K_VRH (GPa)": (m.k_vrh, gpa), "Al2O3 G_VRH (GPa)": (m.g_vrh, gpa),
        "Al2O3 A^U": (universal_anisotropy(C), 1.0), "Al2O3 A^L": (log_euclidean_anisotropy(C), 1.0),
        "Al2O3 distance from isotropy": (distance_from_isotropy(C, "elastic"), 1.0),
        "Al2O3 eigenvalues of d' (GPa)": (np.linalg.eigvalsh(p.dilatational_deviator), gpa),
        "Al2O3 eigenvalues of v' (GPa)": (np.linalg.eigvalsh(p.voigt_deviator), gpa),
        "Al2O3 norm of H (GPa)": (np.linalg.norm(p.harmonic), gpa),
        "Al2O3 block norms 0e[0], 0e[1], 2e[0], 2e[1], 4e (GPa)": (list(n.values()), gpa),
        "Al2O3 symmetry class": sc.name,
        "Al2O3 class residual": (sc.residual, 1.0),
        "Al2O3 symmetry planes found": f"{sc.n_symmetry_planes}",
        "Al2O3 angle of z' to the c axis (deg)": (np.degrees(np.arccos(abs(sc.frame[2, 2]))), 1.0),
        "Al2O3 point-group order": f"{len(point_group_ops(r['structure']))}",
        "Al2O3 residual w.r.t. its structure": (symmetry_residual(C, "elastic", r["structure"]), 1.0),
    })

    r = _record("piezoelectric_mp2015", "mp-661")  # AlN wurtzite, P6_3mc
    e = np.array(r["tensor"])
    q = harmonic_parts(e, "piezoelectric")
    ne = block_norms(e, "piezoelectric")
    cm2 = np.linalg.norm(e)  # the scale of C/m^2 quantities
    expected.update({
        "AlN u = e_ikk (C/m^2)": (q.vector_u, cm2),
        "AlN w = e_kki (C/m^2)": (q.vector_w, cm2),
        "AlN norm of D (C/m^2)": (np.linalg.norm(q.pseudo_deviator), cm2),
        "AlN norm of h (C/m^2)": (np.linalg.norm(q.harmonic), cm2),
        "AlN block norms 1o[0], 1o[1], 2o, 3o (C/m^2)": (list(ne.values()), cm2),
        # exactly 6mm-invariant: the residual is rounding (1e-16 on one machine, 0 on another)
        "AlN residual w.r.t. its structure": (symmetry_residual(e, "piezoelectric", r["structure"]), 1.0),
    })

    r = _record("dielectric_mp2017", "mp-984")  # h-BN, P6_3/mmc
    E = np.array(r["tensor"])
    d = harmonic_parts(E, "dielectric")
    eps = np.linalg.norm(E)
    expected.update({
        "BN isotropic part eps_kk/3": (d.isotropic, eps),
        "BN eigenvalues of the deviator": (np.linalg.eigvalsh(d.deviator), eps),
        "BN relative distance from isotropy": (distance_from_isotropy(E, "dielectric"), 1.0),
        "BN residual w.r.t. its structure": (symmetry_residual(E, "dielectric", r["structure"]), 1.0),
    })
    for label, value in expected.items():
        assert label in rows, f"docs/examples_core.md lacks the row {label!r}"
        _check_row(label, rows[label], value)
