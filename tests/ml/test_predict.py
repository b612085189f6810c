"""Tests of irreptensor_ml.predict with a tiny untrained TensorPredictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.analysis.elasticity import ElasticTensor
from pymatgen.core import Lattice, Structure
from pymatgen.core.tensors import Tensor

import irreptensor as it
from irreptensor_ml import metrics as M
from irreptensor_ml import predict as P
from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.model import TensorPredictor

CUTOFF = 4.0
TINY_TRUNK = {
    "embedding_dim": 8, "irreps_hidden": "8x0e+4x1o+4x2e+2x2o+2x3o+2x4e", "num_layers": 2,
    "cutoff": CUTOFF, "num_basis": 4, "radial_hidden": [8],
}


def tiny_model(properties: tuple[str, ...] = ("elastic",)) -> tuple[TensorPredictor, dict, dict]:
    """Untrained float64 predictor + normalizers fitted on random irreps + a minimal config."""
    torch.manual_seed(0)
    model = TensorPredictor(trunk=TINY_TRUNK, heads={p: None for p in properties}).double()
    gen = torch.Generator().manual_seed(1)
    normalizers = {}
    for p in properties:
        irreps = str(it.irreps(p))
        x = torch.randn(20, it.dim(p), generator=gen, dtype=torch.float64) * 30 + 50
        normalizers[p] = IrrepNormalizer().fit(x, irreps)
        model.outputs[p].load_normalizer(normalizers[p].state_dict())  # the model holds its normalization
    return model, normalizers, {"data": {"cutoff": CUTOFF}}


def perovskite() -> Structure:
    """A slightly distorted (non-cubic) ABO3 cell, so the predicted tensor is not isotropic."""
    return Structure(
        Lattice.from_parameters(3.9, 3.95, 4.1, 90, 90, 90),
        ["Ba", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
    )


@pytest.fixture()
def cif_path(tmp_path: Path) -> Path:
    path = tmp_path / "BaTiO3.cif"
    perovskite().to(filename=str(path))
    return path


def test_predict_cif_matches_direct_model_call(cif_path: Path) -> None:
    model, norms, config = tiny_model()
    got = P.predict(cif_path, "elastic", (model, norms, config))
    assert got.shape == (1, 3, 3, 3, 3) and got.dtype == np.float64
    # the same pipeline by hand
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import structure_to_graph

    batch = collate([(structure_to_graph(Structure.from_file(str(cif_path)), CUTOFF), {})])
    with torch.no_grad():
        y = model(batch.to(torch.float64))["elastic"]
    expected = np.asarray(it.compose(y.numpy(), "elastic"))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # full index symmetry C_ijkl = C_jikl = C_klij
    c = got[0]
    np.testing.assert_allclose(c, c.transpose(1, 0, 2, 3), atol=1e-10)
    np.testing.assert_allclose(c, c.transpose(2, 3, 0, 1), atol=1e-10)


def test_predict_is_equivariant_under_rotation_of_the_structure() -> None:
    """Rotating the crystal rigidly rotates the predicted tensor (frame handling end to end)."""
    model, norms, config = tiny_model(("elastic", "piezoelectric"))
    s = perovskite()
    R = it.random_rotation(seed=3)
    rotated = Structure(
        Lattice(s.lattice.matrix @ R.T), s.species, s.cart_coords @ R.T, coords_are_cartesian=True
    )
    for prop in ("elastic", "piezoelectric"):
        a, b = P.predict([s, rotated], prop, (model, norms, config))
        # pymatgen's Tensor.rotate is an independent implementation of T'_ij.. = R_ia R_jb .. T_ab..
        expected = np.asarray(Tensor(a).rotate(R, tol=1e-6))
        np.testing.assert_allclose(b, expected, atol=1e-9 * np.abs(a).max())


def test_predict_pymatgen_objects(cif_path: Path) -> None:
    model, norms, config = tiny_model()
    loaded = P.LoadedModel(model, norms, config, source="tiny")
    arr = P.predict([cif_path, perovskite()], "elastic", loaded)
    objs = P.predict([cif_path, perovskite()], "elastic", loaded, as_="pymatgen")
    assert len(objs) == 2 and all(isinstance(o, ElasticTensor) for o in objs)
    np.testing.assert_allclose(np.asarray(objs[0]), arr[0])
    assert objs[0].k_vrh == pytest.approx(M.vrh_moduli_table(arr[0])["K_VRH"][0], rel=1e-9)


def test_predict_irreps_are_physical_units(cif_path: Path) -> None:
    model, norms, config = tiny_model()
    x = P.predict_irreps(cif_path, "elastic", (model, norms, config))
    assert x.shape == (1, 21)
    np.testing.assert_allclose(it.decompose(P.predict(cif_path, "elastic", (model, norms, config)), "elastic"), x,
                               rtol=1e-9, atol=1e-9)


def test_predict_errors(tmp_path: Path, cif_path: Path) -> None:
    model, norms, config = tiny_model()
    tiny = (model, norms, config)
    with pytest.raises(P.MissingHeadError, match="no head for property 'dielectric' \\(heads: elastic\\)"):
        P.predict(cif_path, "dielectric", tiny)
    with pytest.raises(ValueError, match="unknown property 'stiffness'"):
        P.predict(cif_path, "stiffness", tiny)
    with pytest.raises(ValueError, match="as_ must be 'array' or 'pymatgen'"):
        P.predict(cif_path, "elastic", tiny, as_="list")
    with pytest.raises(P.StructureFileError, match="file not found: .*missing.cif"):
        P.predict(tmp_path / "missing.cif", "elastic", tiny)
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a cif\n")
    with pytest.raises(P.StructureFileError, match="cannot read a structure from .*bad.cif"):
        P.predict(bad, "elastic", tiny)
    with pytest.raises(FileNotFoundError, match="model not found"):
        P.predict(cif_path, "elastic", tmp_path / "no_run")
    with pytest.raises(ValueError, match="model must be None, a run directory"):
        P.predict(cif_path, "elastic", 42)


def test_predict_without_model_and_without_pretrained(cif_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(P, "pretrained_dir", lambda: tmp_path / "empty")
    with pytest.raises(P.NoPretrainedModelError, match="no pretrained model is shipped for property 'elastic'"):
        P.predict(cif_path, "elastic")


@pytest.mark.parametrize("prop", ["elastic", "dielectric", "piezoelectric"])
def test_shipped_pretrained_models_predict_by_default(cif_path: Path, prop: str) -> None:
    import json
    import warnings

    path = P.pretrained_model_path(prop)  # every property has a shipped model
    card = json.loads((path.parent / "card.json").read_text())
    assert card["property"] == prop and (path.parent / "MODEL_CARD.md").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = P.predict(cif_path, prop)
    rank = {"elastic": 4, "dielectric": 2, "piezoelectric": 3}[prop]
    tensor = np.asarray(out[0]) if isinstance(out, list) else np.asarray(out)
    assert tensor.shape[-rank:] == (3,) * rank and np.isfinite(tensor).all()
    err = card["test_metrics"]["frobenius_mae"]
    # baselines without a tensor (the piezoelectric norm forest) have no Frobenius MAE
    below = any(err >= b["frobenius_mae"] for b in card["baselines"].values() if "frobenius_mae" in b)
    assert below == any("does not beat the trivial baseline" in str(w.message) for w in caught)


def test_read_structure_formats(tmp_path: Path) -> None:
    s = perovskite()
    for name in ("x.cif", "POSCAR", "x.json"):
        s.to(filename=str(tmp_path / name))
        got = P.read_structure(tmp_path / name)
        assert got.composition.reduced_formula == "BaTiO3"
        np.testing.assert_allclose(got.lattice.matrix, s.lattice.matrix, atol=1e-5)
    # unrecognized file name: content sniffed
    (tmp_path / "structure.dat").write_text((tmp_path / "POSCAR").read_text())
    assert P.read_structure(tmp_path / "structure.dat").composition.reduced_formula == "BaTiO3"
    (tmp_path / "junk.dat").write_text("hello\n")
    with pytest.raises(P.StructureFileError, match="not a CIF, POSCAR or pymatgen JSON file"):
        P.read_structure(tmp_path / "junk.dat")


def test_predict_from_saved_model_file_and_run_dir(tmp_path: Path, cif_path: Path) -> None:
    """A model saved in the training package's weights-only format loads by file or directory."""
    from irreptensor_ml.train import save_model

    model, norms, config = tiny_model()
    run_dir = tmp_path / "run"
    path = save_model(run_dir / "model.pt", model.float(), config={"data": {"cutoff": CUTOFF}})
    expected = P.predict(cif_path, "elastic", (model, norms, config))
    for ref in (path, run_dir, str(run_dir)):
        got = P.predict(cif_path, "elastic", ref)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    loaded = P.load_predictor(run_dir)
    assert loaded.properties == ["elastic"] and loaded.cutoff == CUTOFF


def test_predict_dielectric_parts(cif_path: Path) -> None:
    """part="electronic"/"ionic" return the parts, which add up to the total; a model without
    parts says so."""
    torch.manual_seed(0)
    model = TensorPredictor(trunk=TINY_TRUNK, heads={"dielectric": {"parts": True, "output": "exp"}}).double()
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 20, 3, 3))
    el = np.asarray(it.decompose(a @ a.transpose(0, 2, 1) + 2 * np.eye(3), "dielectric"))
    ion = np.asarray(it.decompose(b @ b.transpose(0, 2, 1) + 0.1 * np.eye(3), "dielectric"))
    model.outputs["dielectric"].fit(torch.as_tensor(el + ion), {"electronic": torch.as_tensor(el),
                                                                 "ionic": torch.as_tensor(ion)})
    loaded = (model, {}, {"data": {"cutoff": CUTOFF}})
    total = P.predict(cif_path, "dielectric", loaded)
    parts = {p: P.predict(cif_path, "dielectric", loaded, part=p) for p in ("electronic", "ionic")}
    assert np.allclose(parts["electronic"] + parts["ionic"], total, atol=1e-10)
    assert np.linalg.eigvalsh(parts["electronic"]).min() > 1.0
    assert np.linalg.eigvalsh(parts["ionic"]).min() > 0.0
    with pytest.raises(ValueError, match="expected one of 'total', 'electronic', 'ionic'"):
        P.predict(cif_path, "dielectric", loaded, part="optical")
    with pytest.raises(ValueError, match="expected one of 'total'"):
        P.predict(cif_path, "elastic", tiny_model(), part="ionic")
    plain, norms, cfg = tiny_model(("dielectric",))
    with pytest.raises(ValueError, match="predicts only the total tensor"):
        P.predict(cif_path, "dielectric", (plain, norms, cfg), part="electronic")
