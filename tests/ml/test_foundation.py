"""Foundation trunk (SevenNet-0): the optional-dependency error, equivariance and invariances of
the trunk's features, agreement with sevenn's own energy, the tensor-product head, the feature
cache and the finite-strain conventions.

Tests that need sevenn skip cleanly without it (``pytest.importorskip`` in the fixtures); the
missing-extra message is tested with sevenn hidden from ``sys.modules``.  Equivariance runs in
float64 (trunk built with float64 as default dtype, see :func:`load_sevennet`) and compares with
the exact ``irreptensor.wigner_D`` of the trunk's irreps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import numpy as np
import pytest
import torch
from e3nn import o3
from pymatgen.core import Lattice, Structure

import irreptensor as it
from irreptensor_ml.data import collate, structure_to_graph
from irreptensor_ml.foundation import INSTALL_HINT
from irreptensor_ml.model import TensorHead

PROPERTIES = ("dielectric", "piezoelectric", "elastic")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build e3nn modules with ``dtype`` coefficients (they are computed in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def trunk64():
    """SevenNet-0 trunk (defaults: block 3 + block-4 scalars, parity symmetrised), float64."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import FoundationTrunk

    with _default_dtype(torch.float64):
        return FoundationTrunk().eval()


def polar_structure() -> Structure:
    """A distorted, non-centrosymmetric BaTiO3-like cell (5 atoms, triclinic)."""
    return Structure(
        Lattice.from_parameters(4.0, 4.1, 4.2, 87, 93, 91),
        ["Ba", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.52, 0.47, 0.53], [0.5, 0.5, 0.04], [0.5, 0.03, 0.5], [0.02, 0.5, 0.49]],
    )


def batch_of(structures, cutoff=5.0, dtype=torch.float64):
    return collate([(structure_to_graph(s, cutoff), {}) for s in structures]).to(dtype)


def rotation(seed: int, improper: bool) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    q = q * np.sign(np.linalg.det(q))
    return torch.from_numpy(-q if improper else q)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = expected.abs().max().item()
    assert scale > 1e-6, "reference is (nearly) zero: test would be vacuous"
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


# ---------------------------------------------------------------- without sevenn


def test_missing_extra_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sevenn", None)  # import sevenn -> ImportError
    import irreptensor_ml.foundation as foundation

    assert not foundation.sevenn_available()
    with pytest.raises(ImportError, match=r'pip install "irreptensor\[foundation\]"'):
        foundation.FoundationTrunk()
    with pytest.raises(ImportError, match=r'pip install "irreptensor\[foundation\]"'):
        foundation.sevennet_calculator()
    assert INSTALL_HINT == 'pip install "irreptensor[foundation]"'


def test_head_needs_no_sevenn_and_reaches_every_property():
    from irreptensor_ml.foundation import TensorProductHead

    irreps_in = "8x0o+8x0e+4x1o+4x1e+2x2o+2x2e"  # SevenNet-0's trunk layout, fewer channels
    TensorHead(irreps_in, it.irreps("dielectric"))
    for prop in ("piezoelectric", "elastic"):  # 3o / 4e are out of a linear head's reach
        with pytest.raises(ValueError, match="do not carry"):
            TensorHead(irreps_in, it.irreps(prop))
    for prop in PROPERTIES:
        head = TensorProductHead(irreps_in, it.irreps(prop))
        assert head.irreps_out == o3.Irreps(it.irreps(prop))
    with pytest.raises(ValueError, match="pairwise products"):
        TensorProductHead("8x0e+4x1o", "1x4e")  # 1 (x) 1 reaches l <= 2 only


def test_tensor_product_head_copies_keep_the_state_dict_keys(tmp_path):
    """deepcopy / pickling re-traces e3nn's compiled tensor square; the constants that trace
    adds must not become state (a copy's model.pt must load into a freshly built model)."""
    import copy

    from irreptensor_ml.foundation import TensorProductHead

    torch.manual_seed(0)
    head = TensorProductHead("4x0e+2x1o+2x2e", it.irreps("elastic"), mul_square=2).eval()
    keys = list(head.state_dict())
    torch.save(head, tmp_path / "head.pt")
    copies = [copy.deepcopy(head), torch.load(tmp_path / "head.pt", weights_only=False)]
    copies.append(copy.deepcopy(copies[0]))
    x, batch = o3.Irreps("4x0e+2x1o+2x2e").randn(5, -1), torch.tensor([0, 0, 1, 1, 1])
    for other in copies:
        assert list(other.state_dict()) == keys
        fresh = TensorProductHead("4x0e+2x1o+2x2e", it.irreps("elastic"), mul_square=2).eval()
        fresh.load_state_dict(other.state_dict())  # strict
        other.load_state_dict(head.state_dict())
        with torch.no_grad():
            assert torch.allclose(other(x, batch, 2), head(x, batch, 2), atol=1e-6)
            assert torch.allclose(fresh(x, batch, 2), head(x, batch, 2), atol=1e-6)


HEAD_IRREPS_IN = o3.Irreps("8x0o+8x0e+4x1o+4x1e+2x2o+2x2e")


@pytest.fixture(scope="module")
def heads64():
    from irreptensor_ml.foundation import TensorProductHead

    with _default_dtype(torch.float64):
        torch.manual_seed(0)
        return {p: TensorProductHead(HEAD_IRREPS_IN, it.irreps(p)) for p in PROPERTIES}


@pytest.mark.parametrize("improper", [False, True])
def test_head_equivariance(heads64, improper):
    R = rotation(3, improper)
    x = HEAD_IRREPS_IN.randn(7, -1, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    D_in = torch.as_tensor(it.wigner_D(R, str(HEAD_IRREPS_IN)))
    for prop, head in heads64.items():
        y = head(x, batch, 2)
        assert y.shape == (2, o3.Irreps(it.irreps(prop)).dim)
        D = torch.as_tensor(it.wigner_D(R, prop))
        assert_close(head(x @ D_in.T, batch, 2), y @ D.T, 1e-10)


def test_engineering_strain_matches_pymatgen():
    from pymatgen.analysis.elasticity import Strain

    from irreptensor_ml.foundation import voigt_strain

    for J in range(6):
        expected = np.zeros(6)
        expected[J] = 0.01
        np.testing.assert_allclose(Strain(voigt_strain(J, 0.01)).voigt, expected, atol=1e-15)


# ---------------------------------------------------------------- with sevenn


def test_trunk_interface(trunk64):
    assert trunk64.irreps_out == o3.Irreps("256x0o+256x0e+64x1o+64x1e+32x2o+32x2e")
    assert trunk64.cutoff == 5.0
    assert trunk64.config == {
        "foundation": "7net-0", "layer": 3, "scalar_layers": [4], "parity": "symmetrize",
        "trainable": False,
    }
    assert len(trunk64.supported_atomic_numbers) == 89
    assert not any(p.requires_grad for p in trunk64.parameters())
    x = trunk64(batch_of([polar_structure(), polar_structure()]))
    assert x.shape == (10, trunk64.irreps_out.dim) and x.dtype == torch.float64
    for sl in trunk64.irreps_out.slices():  # every block is used (odd parts are small, not zero)
        assert x[:, sl].abs().max() > 1e-6


def test_trunk_starts_in_training_mode_and_modes_agree(trunk64):
    """Like any new module (Lightning then fine-tunes it without an eval-mode warning); the
    blocks have no mode-dependent layers, so train and eval give the same features."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import FoundationTrunk

    with _default_dtype(torch.float64):
        fresh = FoundationTrunk()
    assert all(m.training for m in fresh.modules())
    batch = batch_of([polar_structure()])
    try:
        with torch.no_grad():
            train_features = trunk64.train()(batch)
            eval_features = trunk64.eval()(batch)
    finally:
        trunk64.eval()
    torch.testing.assert_close(train_features, eval_features, rtol=0, atol=0)


@pytest.mark.parametrize("improper", [False, True])
def test_trunk_rotation_equivariance(trunk64, improper):
    """Rotating positions, lattice and image shifts rotates the features with the exact D."""
    batch = batch_of([polar_structure()])
    R = rotation(7, improper)
    rotated = dataclasses.replace(
        batch, pos=batch.pos @ R.T, edge_shift=batch.edge_shift @ R.T, lattice=batch.lattice @ R.T
    )
    D = torch.as_tensor(it.wigner_D(R, str(trunk64.irreps_out)))
    with torch.no_grad():
        assert_close(trunk64(rotated), trunk64(batch) @ D.T, 1e-10)


def test_native_parity_is_only_so3(trunk64):
    """SevenNet-0 has no parity: its own labels are wrong under inversion (why we symmetrise)."""
    from irreptensor_ml.foundation import FoundationTrunk

    with _default_dtype(torch.float64):
        native = FoundationTrunk(parity="native").eval()
    batch = batch_of([polar_structure()])
    inverted = dataclasses.replace(batch, pos=-batch.pos, edge_shift=-batch.edge_shift)
    D = torch.as_tensor(it.wigner_D(-torch.eye(3, dtype=torch.float64), str(native.irreps_out)))
    with torch.no_grad():
        error = (native(inverted) - native(batch) @ D.T).abs().max()
    assert error > 1e-3


def test_trunk_translation_and_cutoff_invariance(trunk64):
    s = polar_structure()
    moved = s.copy()
    moved.translate_sites(range(len(s)), [0.31, -0.17, 0.45], frac_coords=True, to_unit_cell=True)
    with torch.no_grad():
        x = trunk64(batch_of([s]))
        assert_close(trunk64(batch_of([moved])), x, 1e-10)
        assert_close(trunk64(batch_of([s], cutoff=6.0)), x, 1e-12)  # edges >= 5 A are dropped


def test_centrosymmetric_crystal_has_no_pooled_odd_features(trunk64):
    perovskite = Structure(
        Lattice.cubic(3.95), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    with torch.no_grad():
        pooled = trunk64(batch_of([perovskite])).mean(dim=0)
    for (mul, ir), sl in zip(trunk64.irreps_out, trunk64.irreps_out.slices()):
        if ir.p == -1:
            assert pooled[sl].abs().max() < 1e-10, ir


def test_unknown_element_is_named(trunk64):
    s = Structure(Lattice.cubic(3.4), ["Po"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="Po"):
        trunk64(batch_of([s]))


def test_trunk_reproduces_sevennet_energy():
    """Block-4 features (native labels) through sevenn's own read-out = SevenNetCalculator."""
    pytest.importorskip("sevenn")
    from pymatgen.io.ase import AseAtomsAdaptor

    from irreptensor_ml.foundation import FoundationTrunk, load_sevennet, sevennet_calculator

    s = polar_structure()
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = sevennet_calculator()
    trunk = FoundationTrunk(layer=4, scalar_layers=[], parity="native")
    batch = batch_of([s], cutoff=6.0, dtype=torch.float32)
    readout = load_sevennet().model._modules
    with torch.no_grad():
        data = {"x": trunk(batch), "atom_type": trunk._types(batch.species), "batch": batch.batch}
        for name in ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy",
                     "reduce_total_enegy"):
            data = readout[name](data)
    assert data["inferred_total_energy"].item() == pytest.approx(atoms.get_potential_energy(), rel=1e-5)


def test_trainable_option_keeps_sevenn_fixed_parameters():
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import FoundationTrunk

    trunk = FoundationTrunk(layer=1, scalar_layers=[], trainable=True)
    flags = {name: p.requires_grad for name, p in trunk.named_parameters()}
    assert any(flags.values())
    assert not any(v for name, v in flags.items() if name.endswith("denominator"))
    assert not any(name.startswith("sevennet.2_") for name in flags)  # later blocks are not kept


def test_feature_cache_round_trip(trunk64, tmp_path, monkeypatch):
    import irreptensor_ml.foundation.cache as cache_module
    from irreptensor_ml.foundation import (
        NodeFeatures, cached_node_features, extract_node_features, load_node_features,
        save_node_features,
    )

    perovskite = Structure(Lattice.cubic(3.95), ["Sr", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    silicon = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    graphs = [structure_to_graph(s, 5.0) for s in (polar_structure(), silicon, perovskite)]
    for g, name in zip(graphs, ("polar", "si", "sto")):
        g.material_id = name
    feats = extract_node_features(trunk64, graphs, batch_size=2, dtype=torch.float64, progress=False)
    assert isinstance(feats, NodeFeatures) and len(feats) == 3
    assert feats.features.shape == (12, trunk64.irreps_out.dim)
    with torch.no_grad():
        assert torch.allclose(feats[1], trunk64(batch_of([silicon])), atol=1e-12)

    loaded = load_node_features(save_node_features(feats, tmp_path / "f.pt"))
    assert torch.equal(loaded.features, feats.features) and torch.equal(loaded.num_nodes, feats.num_nodes)
    assert (loaded.irreps, loaded.material_ids, loaded.trunk_config) == (
        feats.irreps, ("polar", "si", "sto"), trunk64.config)

    x, index = loaded.gather([2, 0])
    assert x.shape == (10, trunk64.irreps_out.dim) and index.tolist() == [0] * 5 + [1] * 5
    assert torch.equal(x[:5], feats[2])

    first = cached_node_features(trunk64, graphs, cache_dir=tmp_path, dtype=torch.float64, progress=False)
    assert len(list((tmp_path / "foundation").glob("*.pt"))) == 1
    monkeypatch.setattr(cache_module, "extract_node_features", None)  # a hit must not recompute
    second = cached_node_features(trunk64, graphs, cache_dir=tmp_path, dtype=torch.float64, progress=False)
    assert torch.equal(first.features, second.features)
    assert torch.allclose(first.features, feats.features, atol=1e-12)  # other batch size
    with pytest.raises(ValueError, match="node-features"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_node_features(tmp_path / "bad.pt")


def test_finite_strain_aluminium():
    """One-atom fcc Al (no internal relaxation, ~2 s): cubic, sensible moduli (DFT-PBE: C11 ~ 104,
    C12 ~ 73, C44 ~ 32, K ~ 83 GPa, Materials Project mp-134)."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import finite_strain_elastic

    al = Structure(Lattice.cubic(4.04), ["Al"] * 4,
                   [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]).get_primitive_structure()
    result = finite_strain_elastic(al, strains=(-0.005, 0.005))
    C = result.to_pymatgen().voigt  # cubic axes are the Cartesian axes of the primitive cell
    assert result.converged and np.abs(result.residual_stress).max() < 0.05
    assert C[0, 0] == pytest.approx(C[1, 1], abs=0.5) == pytest.approx(C[2, 2], abs=0.5)
    assert 90 < C[0, 0] < 125 and 55 < C[0, 1] < 80 and 15 < C[3, 3] < 40
    assert 70 < result.to_pymatgen().k_vrh < 95
    assert result.tensor.shape == (3, 3, 3, 3)


@pytest.mark.slow
def test_finite_strain_silicon():
    """Diamond Si, 8 atoms, internal relaxation under shear (10-40 s on 2 cores).  SevenNet-0 gives
    C11 153, C12 70, C44 58 GPa (K_VRH 97, G_VRH 51); DFT-PBE (mp-149): 153, 57, 74."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import finite_strain_elastic

    si = Structure(Lattice.cubic(5.47), ["Si"] * 8,
                   [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.25, .25, .25],
                    [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
    result = finite_strain_elastic(si)
    C = result.voigt
    assert result.converged and result.fit_rms < 0.1
    assert C[0, 0] == pytest.approx(153, abs=10) and C[0, 1] == pytest.approx(70, abs=10)
    assert C[3, 3] == pytest.approx(58, abs=10)
    assert result.to_pymatgen().k_vrh == pytest.approx(97, abs=8)


# ---------------------------------------------------------------- model plumbing


def test_predictor_asks_for_the_extra_without_sevenn(monkeypatch):
    from irreptensor_ml.model import TensorPredictor

    monkeypatch.setitem(sys.modules, "sevenn", None)
    with pytest.raises(ImportError, match=r'pip install "irreptensor\[foundation\]"'):
        TensorPredictor({"foundation": "7net-0", "cutoff": 5.0}, {"dielectric": None})


def test_head_types_are_config_data():
    from irreptensor_ml.model import TensorPredictor, TensorProductHead

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 1, "lmax_sh": 2,
             "message_lmax": 2}
    heads = {"elastic": {"type": "tensor_product", "mul_square": 2}, "dielectric": {}}
    model = TensorPredictor(trunk, {p: {"irreps_out": it.irreps(p), **h} for p, h in heads.items()})
    assert isinstance(model.heads["elastic"], TensorProductHead)
    assert model.config["heads"]["elastic"]["type"] == "tensor_product"
    assert "type" not in model.config["heads"]["dielectric"]  # linear heads keep their old config
    rebuilt = TensorPredictor.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="unknown head type"):
        TensorPredictor(trunk, {"dielectric": {"irreps_out": "1x0e+1x2e", "type": "mlp"}})


@pytest.fixture(scope="module")
def foundation_predictor():
    pytest.importorskip("sevenn")
    from irreptensor_ml.model import TensorPredictor

    torch.manual_seed(0)
    heads = {p: {"irreps_out": it.irreps(p), "type": "tensor_product", "mul_square": 2} for p in PROPERTIES}
    return TensorPredictor({"foundation": "7net-0", "cutoff": 5.0}, heads).eval()


def test_predictor_with_foundation_trunk(foundation_predictor):
    from irreptensor_ml.foundation import FoundationTrunk
    from irreptensor_ml.model import TensorPredictor

    model = foundation_predictor
    assert isinstance(model.trunk, FoundationTrunk)
    assert "cutoff" not in model.config["trunk"]  # the graph cutoff is checked, not stored
    with torch.no_grad():
        out = model(batch_of([polar_structure()], dtype=torch.float32))
    assert {p: tuple(v.shape) for p, v in out.items()} == {
        p: (1, o3.Irreps(it.irreps(p)).dim) for p in PROPERTIES}
    with pytest.raises(ValueError, match="cutoff >= 5.0"):
        TensorPredictor({"foundation": "7net-0", "cutoff": 4.0}, {"dielectric": None})


def test_freeze_trunk_uses_the_trunks_own_rule(foundation_predictor):
    model = foundation_predictor
    try:
        model.freeze_trunk(False)
        flags = {n: p.requires_grad for n, p in model.trunk.named_parameters()}
        assert any(flags.values())
        assert not any(v for n, v in flags.items() if n.endswith("denominator"))  # sevenn's fixed ones
        assert model.trunk.config["trainable"] is True
    finally:
        model.freeze_trunk(True)
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())


def test_checkpoint_round_trip_of_a_foundation_model(foundation_predictor, tmp_path):
    from irreptensor_ml.data.normalization import IrrepNormalizer
    from irreptensor_ml.train.checkpoint import load_model, save_model

    model = foundation_predictor
    identity = {k: v.clone() for k, v in model.outputs.state_dict().items()}
    try:
        for p in PROPERTIES:  # model.pt format 2: the output maps hold the normalization
            norm = IrrepNormalizer().fit(torch.randn(5, o3.Irreps(it.irreps(p)).dim), it.irreps(p))
            model.outputs[p].load_normalizer(norm.state_dict())
        path = save_model(tmp_path / "model.pt", model)
        torch.load(path, weights_only=True)  # plain tensors and containers only
        loaded, loaded_norms, _ = load_model(path)
        batch = batch_of([polar_structure()], dtype=torch.float32)
        with torch.no_grad():
            expected, got = model(batch), loaded(batch)
    finally:  # the module's fixture keeps its own output maps
        model.outputs.load_state_dict(identity)
    for p in PROPERTIES:
        assert torch.equal(expected[p], got[p])
    assert loaded.config == model.config and set(loaded_norms) == set(PROPERTIES)


def test_deepcopy_of_a_foundation_model_keeps_its_state_dict(foundation_predictor):
    """A copy of a foundation-trunk model with tensor-product heads (predict works on one) has
    the original's state_dict keys, not extra buffers of e3nn's re-traced tensor squares."""
    import copy

    model = foundation_predictor
    clone = copy.deepcopy(model)
    assert list(clone.state_dict()) == list(model.state_dict())
    clone.load_state_dict(model.state_dict())  # strict
    batch = batch_of([polar_structure()], dtype=torch.float32)
    with torch.no_grad():
        expected, got = model(batch), clone(batch)
    for p in PROPERTIES:
        assert torch.allclose(got[p], expected[p], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- transfer strategies


def _foundation_study(tmp_path):
    """The foundation preset shrunk to the synthetic data of ``run_id_fixture`` (tiny training)."""
    from irreptensor_ml.transfer.presets import load_study_config

    from run_id_fixture import synthetic_study_data

    config = load_study_config("foundation", [
        "train.trainer.max_epochs=2", "train.trainer.early_stopping_patience=2", "min_train_steps=0",
        "data.batch_size=4", "foundation.head.mul_square=2", "train.trainer.num_threads=1",
        f"results_dir={tmp_path}", "reuse_runs_from=[]", "tuning.candidates={}", "workers=1",
    ])
    return config, synthetic_study_data(config)


def test_foundation_frozen_trains_on_cached_features(tmp_path, monkeypatch):
    """No trunk forward during training; the saved model (real trunk) predicts the cached
    evaluation's numbers from structures; only the head is trainable."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.foundation import FoundationTrunk
    from irreptensor_ml.transfer import runner
    from irreptensor_ml.transfer.execute import prepare_features
    from irreptensor_ml.transfer.plan import Task, make_spec
    from irreptensor_ml.transfer.store import RunStore

    config, data = _foundation_study(tmp_path)
    spec = make_spec(config, data, {}, "foundation-frozen", "piezoelectric", 1.0, 0, 0)
    assert spec.pretrain_id is None and "foundation" in spec.train_config["model"]["trunk"]
    store = RunStore(tmp_path)
    prepare_features([Task(spec, True, "final")], data, store, log=lambda m: None)
    assert len(list((store.feature_cache_dir / "foundation").glob("study-*.pt"))) == 1

    calls = []
    forward = FoundationTrunk.forward
    monkeypatch.setattr(FoundationTrunk, "forward", lambda self, b: calls.append(1) or forward(self, b))
    record = runner.execute_run(spec, data, store.model_path(spec.run_id),
                                feature_cache_dir=store.feature_cache_dir)
    metrics, preds = runner.evaluate_test(spec, data, store.model_path(spec.run_id),
                                          feature_cache_dir=store.feature_cache_dir)
    assert not calls  # training, validation and test read the cache
    head_params = record["train"]["num_trainable_parameters"]
    assert 0 < head_params < record["train"]["num_parameters"] - 800_000

    monkeypatch.setattr(runner, "_uses_cached_features", lambda s: False)  # the saved model itself
    metrics_direct, preds_direct = runner.evaluate_test(spec, data, store.model_path(spec.run_id))
    assert calls
    np.testing.assert_allclose(preds_direct["pred_irreps"], preds["pred_irreps"], rtol=1e-4, atol=1e-5)


def test_foundation_finetune_module_scales_the_trunk_lr(tmp_path):
    pytest.importorskip("sevenn")
    from irreptensor_ml.transfer.runner import _fit_normalizers, run_datasets
    from irreptensor_ml.transfer.strategies import build_module
    from irreptensor_ml.transfer.plan import make_spec

    config, data = _foundation_study(tmp_path)
    config["strategy_settings"] = {"foundation-finetune": {"trunk_lr_scale": 0.1}}
    spec = make_spec(config, data, {}, "foundation-finetune", "elastic", 0.5, 1, 0)
    assert spec.trunk_lr_scale == 0.1
    sets = run_datasets(spec, data)
    norms = _fit_normalizers(sets["train"], sets["heads"], data.irreps)
    module = build_module(spec.strategy, spec.target, data.irreps, spec.train_config, norms,
                          trunk_lr_scale=spec.trunk_lr_scale, properties=sets["heads"])
    groups = {g["name"]: g for g in module.param_groups()}
    lr = float(spec.train_config["optim"]["lr"])
    assert groups["trunk"]["lr"] == pytest.approx(0.1 * lr) and groups["heads"]["lr"] == lr
    assert sum(p.numel() for p in groups["trunk"]["params"]) > 800_000
    with pytest.raises(ValueError, match="foundation trunk config"):
        build_module("scratch", "elastic", data.irreps, spec.train_config, norms, properties=["elastic"])


def test_foundation_study_config_rules():
    from irreptensor_ml.transfer.presets import load_study_config

    config = load_study_config("foundation")
    assert config["strategies"] == ["scratch", "foundation-frozen", "foundation-finetune"]
    assert "elastic" in config["targets"]  # allowed: no strategy reuses the elastic pretraining
    with pytest.raises(ValueError, match="cannot also be a target"):
        load_study_config("foundation", ["strategies=[scratch,frozen]",
                                         "tuning.candidates={}"])
    with pytest.raises(ValueError, match="trunk_lr_scale applies only"):
        load_study_config("foundation", ["strategy_settings={foundation-frozen: {trunk_lr_scale: 0.1}}"])
    with pytest.raises(ValueError, match="unequal tuning budget"):
        load_study_config("foundation", ["tuning.candidates.foundation-frozen=[{optim.lr: 0.01}]"])


def _chained_study(tmp_path):
    """``_foundation_study`` with foundation-finetune starting from foundation-frozen (LP-FT)."""
    config, data = _foundation_study(tmp_path)
    config["strategy_settings"] = {"foundation-finetune": {
        "start_from": "foundation-frozen", "trunk_lr_scale": 0.1, "min_train_steps": 5}}
    config["tuning"]["candidates"] = {"scratch": [{"optim.lr": 0.01}, {"optim.lr": 0.002}],
                                      "foundation-frozen": [{"optim.lr": 0.01}, {"optim.lr": 0.02}]}
    return config, data


def test_foundation_finetune_plans_its_start_from_the_chosen_frozen_run(tmp_path):
    from irreptensor_ml.transfer.plan import make_spec, plan_runs, plan_trials

    config, data = _chained_study(tmp_path)
    trials = plan_trials(config, data, {})
    assert {s.strategy for s in trials} == {"scratch", "foundation-frozen"}  # no tuning of the chained one
    for chosen in (0, 1):
        selection = {t: {s: {"chosen": chosen if s == "foundation-frozen" else 0} for s in config["strategies"]}
                     for t in config["targets"]}
        finals = {(s.strategy, s.target, s.fraction, s.seed): s for s in plan_runs(config, data, {}, selection)}
        for (strategy, target, fraction, seed), spec in finals.items():
            if strategy != "foundation-finetune":
                assert spec.min_train_steps is None
                continue
            frozen = finals[("foundation-frozen", target, fraction, seed)]
            assert frozen.candidate == chosen and spec.pretrain_id == frozen.run_id
            assert spec.min_train_steps == 5 and spec.trunk_lr_scale == 0.1
    plain = make_spec({**config, "strategy_settings": {"foundation-finetune": {"trunk_lr_scale": 0.1}}},
                      data, {}, "foundation-finetune", "elastic", 1.0, 0, 0)
    chained = make_spec(config, data, {}, "foundation-finetune", "elastic", 1.0, 0, 0)
    assert plain.pretrain_id is None and plain.run_id != chained.run_id


def test_foundation_finetune_continues_the_frozen_model(tmp_path):
    """The fine-tuning run starts from the frozen run's trunk and trained head (with learning rates
    of ~0 it ends there), takes the spec's min_train_steps, and names a missing start model."""
    pytest.importorskip("sevenn")
    from irreptensor_ml.transfer import runner
    from irreptensor_ml.transfer.execute import prepare_features
    from irreptensor_ml.transfer.plan import Task, make_spec
    from irreptensor_ml.transfer.store import RunStore

    config, data = _chained_study(tmp_path)
    config["strategy_settings"]["foundation-finetune"].update({"optim.lr": 1e-12, "optim.min_lr": 1e-12})
    store = RunStore(tmp_path)
    frozen = make_spec(config, data, {}, "foundation-frozen", "piezoelectric", 1.0, 0, 0)
    spec = make_spec(config, data, {}, "foundation-finetune", "piezoelectric", 1.0, 0, 0)
    assert spec.pretrain_id == frozen.run_id
    prepare_features([Task(frozen, True, "final")], data, store, log=lambda m: None)
    runner.execute_run(frozen, data, store.model_path(frozen.run_id), feature_cache_dir=store.feature_cache_dir)
    with pytest.raises(ValueError, match="starts from run .*missing"):
        runner.execute_run(spec, data, tmp_path / "ft.pt", pretrained_model=tmp_path / "absent.pt")
    record = runner.execute_run(spec, data, tmp_path / "ft.pt", pretrained_model=store.model_path(frozen.run_id))
    n_train = record["train"]["n_train_samples"]
    steps_per_epoch = -(-n_train // int(spec.train_config["data"]["batch_size"]))
    assert record["train"]["max_epochs"] * steps_per_epoch >= 5  # the spec's min_train_steps (study: 0)
    assert record["train"]["num_trainable_parameters"] > 800_000
    start = torch.load(store.model_path(frozen.run_id), weights_only=True)["state_dict"]
    end = torch.load(tmp_path / "ft.pt", weights_only=True)["state_dict"]
    assert start.keys() == end.keys()
    for key, value in start.items():
        if value.is_floating_point() and "running" not in key:  # batch-norm statistics do move
            torch.testing.assert_close(end[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_start_from_config_rules():
    from irreptensor_ml.transfer.presets import load_study_config

    chained = "strategy_settings={foundation-finetune: {start_from: foundation-frozen}}"
    with pytest.raises(ValueError, match="start_from='frozen'"):
        load_study_config("foundation", ["strategy_settings={foundation-finetune: {start_from: frozen}}"])
    with pytest.raises(ValueError, match="only for"):
        load_study_config("foundation", ["strategy_settings={scratch: {start_from: foundation-frozen}}"])
    with pytest.raises(ValueError, match="is not one of the study's strategies"):
        load_study_config("foundation", [chained, "strategies=[scratch,foundation-finetune]",
                                         "tuning.candidates={}"])
    with pytest.raises(ValueError, match="has one candidate"):
        load_study_config("foundation", [chained])  # the foundation preset tunes foundation-finetune
    with pytest.raises(ValueError, match="min_train_steps must be an integer"):
        load_study_config("foundation", ["strategy_settings={scratch: {min_train_steps: -1}}"])
    with pytest.raises(ValueError, match="belong in strategy_settings"):
        load_study_config("foundation", ["tuning.candidates.scratch=[{min_train_steps: 3}, {optim.lr: 0.1}]"])
    config = load_study_config("foundation", [
        chained, "tuning.candidates={scratch: [{optim.lr: 0.005}, {optim.lr: 0.002}], "
        "foundation-frozen: [{optim.lr: 0.005}, {optim.lr: 0.02}]}"])
    assert config["strategy_settings"]["foundation-finetune"]["start_from"] == "foundation-frozen"


def test_finetune_cpu_preset_reuses_the_foundation_cpu_runs(tmp_path):
    """Its scratch and foundation-frozen runs have foundation-cpu's ids (copied, not retrained)."""
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.plan import make_spec

    from run_id_fixture import synthetic_study_data

    cpu = load_study_config("foundation-cpu")
    finetune = load_study_config("foundation-finetune-cpu")
    assert finetune["reuse_runs_from"] == [cpu["results_dir"]]
    assert set(finetune["seeds"]) <= set(cpu["seeds"]) and finetune["fractions"] == cpu["fractions"]
    data = synthetic_study_data(cpu)
    for strategy in ("scratch", "foundation-frozen"):
        for k in (0, 1):
            ids = [make_spec(c, data, {}, strategy, "piezoelectric", 0.25, 1, k).run_id for c in (cpu, finetune)]
            assert ids[0] == ids[1]
    spec = make_spec(finetune, data, {}, "foundation-finetune", "piezoelectric", 0.25, 1, 0)
    assert spec.pretrain_id == make_spec(cpu, data, {}, "foundation-frozen", "piezoelectric", 0.25, 1, 0).run_id


def test_strategy_registry_validates_configs_without_torch():
    """presets.py reads the strategies from the torch-free registry that strategies.py builds on."""
    import subprocess
    import sys

    code = ("import sys; from irreptensor_ml.transfer import presets, registry; "
            "assert presets._STRATEGIES == tuple(registry.STRATEGIES); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    from irreptensor_ml.transfer import registry, strategies

    assert strategies.STRATEGIES is registry.STRATEGIES and strategies.START_FROM is registry.START_FROM


def test_report_names_the_untuned_chained_strategy():
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.report import _chained

    assert _chained(load_study_config("foundation-finetune-cpu")) == {"foundation-finetune": "foundation-frozen"}
    assert _chained(load_study_config("foundation")) == {}
