"""Output maps: physically admissible outputs, equivariance, gradients, normalization round trips,
loss kinds, and the conversion of format-1 model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import irreptensor as it
from irreptensor_ml.model import OutputMap, TensorPredictor
from irreptensor_ml.model.outputs import matrix_form
from irreptensor_ml.train.module import masked_loss

KINDS = ("dielectric", "elastic")


def _rotation(seed: int, improper: bool) -> np.ndarray:
    R = np.asarray(it.random_rotation(seed=seed))
    return -R if improper else R


def _fitted(kind: str, seed: int = 0) -> OutputMap:
    """An exp map fitted on random positive-definite tensors of ``kind``."""
    rng = np.random.default_rng(seed)
    m = 3 if kind == "dielectric" else 6
    a = rng.normal(size=(30, m, m))
    mats = a @ a.transpose(0, 2, 1) + np.eye(m) * (2.0 if kind == "dielectric" else 50.0)
    if kind == "dielectric":
        cart = mats + np.eye(3)
    else:
        cart = np.asarray(it.from_mandel(mats, "elastic"))
    x = torch.as_tensor(np.asarray(it.decompose(cart, kind)))
    return OutputMap(kind, it.dim(kind), "exp").double().fit(x)


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_form_is_an_isometry(kind):
    A = matrix_form(kind)
    assert np.allclose(A.T @ A, np.eye(it.dim(kind)), atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), improper=st.booleans(), kind=st.sampled_from(KINDS),
       spread=st.floats(0.0, 3.0))
def test_exp_output_is_equivariant_and_positive_definite(seed, improper, kind, spread):
    out = _fitted(kind)
    y = torch.as_tensor(np.random.default_rng(seed).normal(size=(4, it.dim(kind))) * spread)
    x = out(y)
    D = torch.as_tensor(np.asarray(it.wigner_D(_rotation(seed, improper), kind)))
    # the scale/shift are per irrep block, hence commute with D: rotate the latent, rotate the output
    assert torch.allclose(out(y @ D.T), x @ D.T, atol=1e-8 * (1 + x.abs().max()))
    cart = np.asarray(it.compose(x.detach().numpy(), kind))
    if kind == "dielectric":
        assert np.linalg.eigvalsh(cart).min() > 1.0
    else:
        assert np.linalg.eigvalsh(np.asarray(it.to_mandel(cart, "elastic"))).min() > 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_exp_output_has_finite_gradients_at_isotropic_inputs(kind):
    out = _fitted(kind)
    y = torch.zeros(2, it.dim(kind), dtype=torch.float64)
    y[:, 0] = -out.shift[0] / out.scale[0]  # latent L = 0: expm at a fully degenerate matrix
    y[1, 0] += 0.3
    y.requires_grad_(True)
    out(y).pow(2).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_latent_round_trip(kind):
    out = _fitted(kind, seed=1)
    rng = np.random.default_rng(2)
    y = torch.as_tensor(rng.normal(size=(5, it.dim(kind))) * 0.5)
    assert torch.allclose(out.latent_target(out(y)), y, atol=1e-7)


def test_exp_floors_non_positive_definite_targets():
    out = OutputMap("elastic", 21, "exp").double()
    bad = np.asarray(it.decompose(np.asarray(it.from_mandel(-np.eye(6) * 10, "elastic")), "elastic"))
    good = np.asarray(it.decompose(np.asarray(it.from_mandel(np.eye(6) * 100, "elastic")), "elastic"))
    x = torch.as_tensor(np.stack([good, bad]))
    assert out.not_positive_definite(x) == [1]
    out.fit(x)
    assert torch.isfinite(out.shift).all() and torch.isfinite(out.scale).all()


def test_exp_is_refused_for_piezoelectric():
    with pytest.raises(ValueError, match="applies to dielectric, elastic"):
        OutputMap("piezoelectric", 18, "exp")
    with pytest.raises(ValueError, match="unknown output transform"):
        OutputMap("dielectric", 6, "softplus")


def test_output_buffers_stay_float64_when_the_model_is_cast():
    model = TensorPredictor(
        trunk={"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 1, "cutoff": 4.0,
               "num_basis": 4, "radial_hidden": [8]},
        heads={"dielectric": {"output": "exp"}},
    )
    model.outputs["dielectric"].scale.fill_(1.0 / 3.0)
    model = model.float()
    assert model.outputs["dielectric"].scale.dtype == torch.float64
    assert model.config["heads"]["dielectric"]["output"] == "exp"
    assert TensorPredictor.from_config(model.config).outputs["dielectric"].transform == "exp"


def test_relative_and_log_losses():
    pred = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    true = torch.tensor([[1.0, 0.0], [0.05, 0.0]])
    mask = torch.tensor([True, True])
    # relative: ||e|| / max(||true||, floor): 1/1 and 0.05/0.1
    got = masked_loss(pred, true, mask, "relative", floor=0.1)
    assert got.item() == pytest.approx((1.0 + 0.5) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="floor"):
        masked_loss(pred, true, mask, "relative")
    # log: the frobenius form on latent coordinates
    scale = torch.ones(2)
    assert masked_loss(pred, true, mask, "log", scale=scale).item() == pytest.approx(
        masked_loss(pred, true, mask, "frobenius", scale=scale).item())


def test_log_loss_needs_an_exp_output():
    from irreptensor_ml.train.module import TensorLightningModule

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 1, "cutoff": 4.0,
             "num_basis": 4, "radial_hidden": [8]}
    with pytest.raises(ValueError, match="needs an output transform with a log space"):
        TensorLightningModule({"dielectric": "1x0e+1x2e"}, {"trunk": trunk}, {"type": "log"})
    with pytest.raises(ValueError, match="not trained properties"):
        TensorLightningModule({"dielectric": "1x0e+1x2e"}, {"trunk": trunk, "outputs": {"elastic": "exp"}})


def test_format_1_model_file_is_converted(tmp_path):
    """A model.pt of format 1 (normalizers stored beside a model without output maps) loads and
    predicts physical units."""
    from irreptensor_ml.data.normalization import IrrepNormalizer
    from irreptensor_ml.train import load_model

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 1, "cutoff": 4.0,
             "num_basis": 4, "radial_hidden": [8]}
    model = TensorPredictor(trunk=trunk, heads={"dielectric": None})
    norm = IrrepNormalizer().fit(torch.randn(10, 6, dtype=torch.float64) * 5 + 7, "1x0e+1x2e")
    old_state = {k: v for k, v in model.state_dict().items() if not k.startswith("outputs.")}
    payload = {"format": "irreptensor_ml.model", "format_version": 1, "model_config": model.config,
               "state_dict": old_state, "normalizers": {"dielectric": norm.state_dict()},
               "config": {"data": {"cutoff": 4.0}}, "info": {}}
    torch.save(payload, tmp_path / "model.pt")
    loaded, norms, _ = load_model(tmp_path / "model.pt")
    assert torch.equal(loaded.outputs["dielectric"].scale, norm.scale)
    assert torch.equal(norms["dielectric"].shift, norm.shift)


def _parts_targets(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random physical dielectric parts (electronic >= 1, ionic >= 0, some ionic exactly 0) and
    their sum, as irreps."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n, 3, 3))
    el = a @ a.transpose(0, 2, 1) + 2.0 * np.eye(3)
    ion = b @ b.transpose(0, 2, 1) * 5.0 + 0.05 * np.eye(3)  # eigenvalues above the log floor
    ion[::5] = 0.0  # non-polar crystals: no ionic contribution
    parts = {p: torch.as_tensor(np.asarray(it.decompose(t, "dielectric"))) for p, t in
             (("electronic", el), ("ionic", ion))}
    return parts["electronic"] + parts["ionic"], parts


@pytest.mark.parametrize("transform", ["exp", "linear"])
def test_parts_sum_to_the_total_and_round_trip(transform):
    total, parts = _parts_targets()
    out = OutputMap("dielectric", 6, transform, parts=("electronic", "ionic")).double().fit(total, parts)
    assert out.shift.shape == (12,) and out.latent_dim == 12
    y = out.latent_target(total, parts=parts)
    got = out.forward_parts(y)
    assert torch.allclose(out(y), got["electronic"] + got["ionic"], atol=1e-10)
    keep = np.arange(30) % 5 != 0  # the floored (zero) ionic parts come back at the floor, not 0
    atol = 1e-9 if transform == "linear" else 1e-6
    assert torch.allclose(got["electronic"], parts["electronic"], atol=atol)
    assert torch.allclose(got["ionic"][keep], parts["ionic"][keep], atol=atol)
    assert torch.allclose(got["ionic"][~keep], parts["ionic"][~keep], atol=1e-2)
    with pytest.raises(ValueError, match="missing targets"):
        out.to_latent(total)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), improper=st.booleans(), spread=st.floats(0.0, 3.0))
def test_exp_parts_are_equivariant_and_physical(seed, improper, spread):
    total, parts = _parts_targets()
    out = OutputMap("dielectric", 6, "exp", parts=("electronic", "ionic")).double().fit(total, parts)
    y = torch.as_tensor(np.random.default_rng(seed).normal(size=(4, 12)) * spread)
    D = torch.as_tensor(np.asarray(it.wigner_D(_rotation(seed, improper), "dielectric")))
    D2 = torch.block_diag(D, D)
    got, rotated = out.forward_parts(y), out.forward_parts(y @ D2.T)
    for name, floor in (("electronic", 1.0), ("ionic", 0.0)):
        assert torch.allclose(rotated[name], got[name] @ D.T, atol=1e-8 * (1 + got[name].abs().max()))
        cart = np.asarray(it.compose(got[name].numpy(), "dielectric"))
        assert np.linalg.eigvalsh(cart).min() > floor
    assert np.linalg.eigvalsh(np.asarray(it.compose(out(y).numpy(), "dielectric"))).min() > 1.0


def test_parts_are_refused_where_a_property_has_none():
    with pytest.raises(ValueError, match="no part"):
        OutputMap("elastic", 21, "exp", parts=("electronic",))
    with pytest.raises(ValueError, match="has no parts"):
        TensorPredictor(trunk={"embedding_dim": 8, "irreps_hidden": "8x0e+2x2e+2x4e", "num_layers": 2,
                               "cutoff": 4.0, "num_basis": 4, "radial_hidden": [8]},
                        heads={"elastic": {"parts": True}})


def test_a_head_with_parts_trains_on_every_part_and_reloads(tmp_path):
    """Loss terms of the total and of both parts; the model file keeps the parts."""
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import structure_to_graph
    from irreptensor_ml.train.checkpoint import load_model, save_model
    from irreptensor_ml.train.module import TensorLightningModule
    from pymatgen.core import Lattice, Structure

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 2, "cutoff": 4.0,
             "num_basis": 4, "radial_hidden": [8]}
    total, parts = _parts_targets(4)
    targets = {"dielectric": total, "dielectric_electronic": parts["electronic"],
               "dielectric_ionic": parts["ionic"]}
    with pytest.raises(ValueError, match="train_targets lacks"):
        TensorLightningModule({"dielectric": "1x0e+1x2e"},
                              {"trunk": trunk, "heads": {"dielectric": {"parts": True}}},
                              train_targets={"dielectric": total})
    module = TensorLightningModule({"dielectric": "1x0e+1x2e"},
                                   {"trunk": trunk, "heads": {"dielectric": {"parts": True}},
                                    "outputs": {"dielectric": "exp"}},
                                   {"type": "relative"}, train_targets=targets).double()
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    g = structure_to_graph(s, 4.0)
    batch = collate([(g, {k: v[i] for k, v in targets.items()}) for i in range(4)]).to(torch.float64)
    loss = module._shared_step(batch, "val")
    latent, phys = module.model.forward_latent(batch)
    expected = sum(
        masked_loss(phys[k], batch.targets[k], batch.masks[k], "relative", floor=1.0) for k in targets
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert latent["dielectric"].shape == (4, 12)
    del batch.targets["dielectric_ionic"]
    with pytest.raises(ValueError, match="dielectric_ionic"):
        module._shared_step(batch, "val")
    path = save_model(tmp_path / "model.pt", module.model, {"data": {"cutoff": 4.0}}, {})
    model, _, _ = load_model(path, dtype=torch.float64)
    assert model.outputs["dielectric"].parts == ("electronic", "ionic")
    assert model.config["heads"]["dielectric"]["parts"] is True
    batch2 = collate([(g, {})]).to(torch.float64)
    assert torch.allclose(model(batch2)["dielectric_ionic"], module.model(batch2)["dielectric_ionic"])


def test_sign_free_relative_loss_ignores_the_overall_sign():
    pred = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    true = torch.tensor([[-1.0, -2.0], [0.0, 1.0]])
    mask = torch.tensor([True, True])
    got = masked_loss(pred, true, mask, "relative_sign_free", floor=0.1)
    # row 0: -true is exact; row 1: both signs are sqrt(1.25) away from a target of norm 1
    assert got.item() == pytest.approx((0.0 + 1.25 ** 0.5) / 2, abs=1e-5)
    assert masked_loss(pred, true, mask, "relative", floor=0.1).item() > got.item() + 0.5


def test_ensemble_is_the_mean_of_its_members_and_saves_as_one_model(tmp_path):
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import structure_to_graph
    from irreptensor_ml.model import TensorEnsemble
    from irreptensor_ml.train.checkpoint import load_model, save_model
    from pymatgen.core import Lattice, Structure

    trunk = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o+2x2e", "num_layers": 2, "cutoff": 4.0,
             "num_basis": 4, "radial_hidden": [8]}
    total, parts = _parts_targets(8)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = TensorPredictor(trunk=trunk, heads={"dielectric": {"parts": True, "output": "exp"}}).double()
        m.outputs["dielectric"].fit(total, parts)
        members.append(m)
    ens = TensorEnsemble(members)
    s = Structure(Lattice.tetragonal(3.9, 4.3), ["Ba", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0.0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    batch = collate([(structure_to_graph(s, 4.0), {})]).to(torch.float64)
    got = ens(batch)
    for key in ("dielectric", "dielectric_electronic", "dielectric_ionic"):
        assert torch.allclose(got[key], sum(m(batch)[key] for m in members) / 3)
    assert np.linalg.eigvalsh(np.asarray(it.compose(got["dielectric"].detach().numpy(), "dielectric"))).min() > 1
    path = save_model(tmp_path / "model.pt", ens, {"data": {"cutoff": 4.0}})
    loaded, _, _ = load_model(path, dtype=torch.float64)
    assert isinstance(loaded, TensorEnsemble) and len(loaded.members) == 3
    assert torch.allclose(loaded(batch)["dielectric"], got["dielectric"])
    other = TensorPredictor(trunk=trunk, heads={"dielectric": None}).double()
    with pytest.raises(ValueError, match="parts"):
        TensorEnsemble([members[0], other])
