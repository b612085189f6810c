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
    V = it.to_voigt(T[0, 0])
    np.testing.assert_allclose(np.array(ElasticTensor.from_voigt(V)), T[0, 0], atol=1e-15)
    S = it.to_voigt(T[0, 0], "compliance")
    np.testing.assert_allclose(np.array(ComplianceTensor.from_voigt(S)), T[0, 0], atol=1e-15)
    e = _random("piezoelectric", seed=3)
    np.testing.assert_allclose(np.array(PiezoTensor.from_voigt(it.to_voigt(e, "piezoelectric"))), e, atol=1e-15)


def test_pymatgen_inputs_accepted_everywhere():
    from pymatgen.analysis.elasticity import ElasticTensor
    from pymatgen.analysis.piezo import PiezoTensor

    C = _random("elastic", seed=4) + it.from_voigt(np.eye(6) * 10)
    E = ElasticTensor(C)
    np.testing.assert_array_equal(it.decompose(E), it.decompose(C))
    np.testing.assert_allclose(it.rotate(E, np.eye(3)), C)
    assert harmonic_parts(E).bulk_modulus == pytest.approx(E.k_voigt)
    assert vrh_moduli(E).g_reuss == pytest.approx(E.g_reuss)
    assert symmetry_class(E).name == symmetry_class(C).name
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


def _fmt(values, digits):
    """Comma-separated fixed-point numbers, without a "-0.000" for values that round to zero."""
    return ", ".join(f"{round(float(v), digits) + 0.0:.{digits}f}" for v in np.atleast_1d(values))


def _rows(doc):
    """``| label | value |`` rows of the markdown tables -> {label: value string}."""
    out = {}
    for m in re.finditer(r"^\| ([^|]+?) \| `?([^|`]+?)`? \|$", doc, flags=re.M):
        out[m.group(1).strip()] = m.group(2).strip()
    return out


def test_docs_examples_numbers():
    """Every number in the tables of docs/examples_core.md is recomputed here (same rounding)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    rows = _rows(DOC.read_text())
    expected = {}

    r = _record("elastic_mp2015", "mp-1143")  # Al2O3 corundum, R-3c
    C = np.array(r["tensor"])
    p = harmonic_parts(C)
    m = vrh_moduli(C)
    n = block_norms(C)
    sc = symmetry_class(C, tol=1e-2)
    expected.update({
        "Al2O3 K_V (GPa)": f"{p.bulk_modulus:.2f}", "Al2O3 G_V (GPa)": f"{p.shear_modulus:.2f}",
        "Al2O3 K_R (GPa)": f"{m.k_reuss:.2f}", "Al2O3 G_R (GPa)": f"{m.g_reuss:.2f}",
        "Al2O3 K_VRH (GPa)": f"{m.k_vrh:.2f}", "Al2O3 G_VRH (GPa)": f"{m.g_vrh:.2f}",
        "Al2O3 A^U": f"{universal_anisotropy(C):.4f}", "Al2O3 A^L": f"{log_euclidean_anisotropy(C):.4f}",
        "Al2O3 distance from isotropy": f"{distance_from_isotropy(C):.4f}",
        "Al2O3 eigenvalues of d' (GPa)": _fmt(np.linalg.eigvalsh(p.dilatational_deviator), 2),
        "Al2O3 eigenvalues of v' (GPa)": _fmt(np.linalg.eigvalsh(p.voigt_deviator), 2),
        "Al2O3 norm of H (GPa)": f"{np.linalg.norm(p.harmonic):.2f}",
        "Al2O3 block norms 0e[0], 0e[1], 2e[0], 2e[1], 4e (GPa)": _fmt(list(n.values()), 2),
        "Al2O3 symmetry class": sc.name,
        "Al2O3 class residual": f"{sc.residual:.1e}",
        "Al2O3 symmetry planes found": f"{sc.n_symmetry_planes}",
        "Al2O3 angle of z' to the c axis (deg)": f"{np.degrees(np.arccos(abs(sc.frame[2, 2]))):.2f}",
        "Al2O3 point-group order": f"{len(point_group_ops(r['structure']))}",
        "Al2O3 residual w.r.t. its structure": f"{symmetry_residual(C, 'elastic', r['structure']):.1e}",
    })

    r = _record("piezoelectric_mp2015", "mp-661")  # AlN wurtzite, P6_3mc
    e = np.array(r["tensor"])
    q = harmonic_parts(e, "piezoelectric")
    ne = block_norms(e, "piezoelectric")
    expected.update({
        "AlN u = e_ikk (C/m^2)": _fmt(q.vector_u, 4),
        "AlN w = e_kki (C/m^2)": _fmt(q.vector_w, 4),
        "AlN norm of D (C/m^2)": f"{np.linalg.norm(q.pseudo_deviator):.4f}",
        "AlN norm of h (C/m^2)": f"{np.linalg.norm(q.harmonic):.4f}",
        "AlN block norms 1o[0], 1o[1], 2o, 3o (C/m^2)": _fmt(list(ne.values()), 4),
        "AlN residual w.r.t. its structure": f"{symmetry_residual(e, 'piezoelectric', r['structure']):.1e}",
    })

    r = _record("dielectric_mp2017", "mp-984")  # h-BN, P6_3/mmc
    E = np.array(r["tensor"])
    d = harmonic_parts(E, "dielectric")
    expected.update({
        "BN isotropic part eps_kk/3": f"{d.isotropic:.4f}",
        "BN eigenvalues of the deviator": _fmt(np.linalg.eigvalsh(d.deviator), 4),
        "BN relative distance from isotropy": f"{distance_from_isotropy(E, 'dielectric'):.4f}",
        "BN residual w.r.t. its structure": f"{symmetry_residual(E, 'dielectric', r['structure']):.1e}",
    })
    for label, value in expected.items():
        assert label in rows, f"docs/examples_core.md lacks the row {label!r}"
        assert rows[label] == value, f"{label}: docs say {rows[label]!r}, recomputed {value!r}"
