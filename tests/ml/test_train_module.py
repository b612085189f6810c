"""Tests of the loss, the Lightning module (normalization, masking, optimisers) and the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data import IrrepNormalizer, collate, structure_to_graph
from irreptensor_ml.train import TensorLightningModule, load_config, masked_loss
from irreptensor_ml.train.config import apply_overrides

TINY_MODEL = {
    "trunk": {
        "embedding_dim": 8,
        "irreps_hidden": "8x0e+2x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e+1x4e+1x4o",
        "num_layers": 3,
        "cutoff": 4.0,
        "num_basis": 4,
        "radial_hidden": [8],
        "avg_num_neighbors": 10.0,
    },
    "heads": {},
}
IRREPS = {"dielectric": "1x0e+1x2e", "piezoelectric": "2x1o+1x2o+1x3o"}
DIMS = {"dielectric": 6, "piezoelectric": 18}


def test_masked_loss_ignores_masked_rows():
    pred = torch.tensor([[1.0, 1.0], [5.0, -5.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([True, False, True])
    loss = masked_loss(pred, target, mask)
    assert loss.item() == pytest.approx(((1 + 0) / 2 + (0 + 4) / 2) / 2)
    loss.backward()
    assert torch.all(pred.grad[1] == 0) and pred.grad[0, 0] != 0
    huber = masked_loss(pred.detach(), target, mask, "smooth_l1", beta=1.0)
    assert huber.item() == pytest.approx(((0.5 + 0) / 2 + (0 + 1.5) / 2) / 2)


def test_frobenius_loss_is_the_physical_error_norm_and_rotation_invariant():
    import irreptensor as it

    rng = np.random.default_rng(0)
    scale = torch.tensor([4.0, 2.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)  # dielectric 0e + 2e
    pred = torch.as_tensor(rng.normal(size=(5, 6)), dtype=torch.float64)
    target = torch.as_tensor(rng.normal(size=(5, 6)), dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True])
    loss = masked_loss(pred, target, mask, "frobenius", scale=scale)
    # physical Cartesian error: normalized difference times the scale, composed to 3x3
    err = it.compose(((pred - target) * scale).numpy(), "dielectric")
    frob = np.sqrt((err**2).sum(axis=(-2, -1)))[mask.numpy()]
    assert loss.item() == pytest.approx(frob.mean() / float(scale.pow(2).mean().sqrt()), rel=1e-10)
    # rotating prediction and target together leaves it unchanged
    D = torch.as_tensor(it.wigner_D(it.random_rotation(seed=1), "dielectric"))
    rot = masked_loss(pred @ D.T, target @ D.T, mask, "frobenius", scale=torch.full((6,), 2.0, dtype=torch.float64))
    ref = masked_loss(pred, target, mask, "frobenius", scale=torch.full((6,), 2.0, dtype=torch.float64))
    assert rot.item() == pytest.approx(ref.item(), rel=1e-12)
    # finite gradient at a perfect prediction; a clear error without the scale
    exact = target.clone().requires_grad_(True)
    masked_loss(exact, target, mask, "frobenius", scale=scale).backward()
    assert torch.isfinite(exact.grad).all()
    with pytest.raises(ValueError, match="needs the normalizer scale"):
        masked_loss(pred, target, mask, "frobenius")


def test_masked_loss_all_masked_is_zero_but_connected():
    pred = torch.ones(3, 4, requires_grad=True)
    loss = masked_loss(pred, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph (needed for DDP)
    assert torch.all(pred.grad == 0)


def test_masked_loss_validates():
    with pytest.raises(ValueError, match="shapes"):
        masked_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="kind"):
        masked_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, dtype=torch.bool), "l3")


def _normalizers(rng: np.random.Generator) -> dict[str, IrrepNormalizer]:
    return {
        p: IrrepNormalizer().fit(torch.as_tensor(rng.normal(3.0, 2.0, (20, DIMS[p]))), s)
        for p, s in IRREPS.items()
    }


def _batch(rng: np.random.Generator):
    samples = []
    for i in range(4):
        lat = Lattice(np.diag([3.8, 4.0, 4.1]) + rng.uniform(-0.3, 0.3, (3, 3)))
        s = Structure(lat, ["Si", "O", "Ba"], rng.uniform(0, 1, (3, 3)))
        targets = {"dielectric": torch.as_tensor(rng.normal(size=6))}
        if i % 2:
            targets["piezoelectric"] = torch.as_tensor(rng.normal(size=18))
        samples.append((structure_to_graph(s, 4.0), targets))
    return collate(samples, DIMS).to(torch.float32)


def test_module_normalizes_targets_and_stores_normalizers():
    rng = np.random.default_rng(0)
    norms = _normalizers(rng)
    torch.manual_seed(0)
    module = TensorLightningModule(IRREPS, TINY_MODEL, {"weights": {"piezoelectric": 2.0}}, {}, norms)
    batch = _batch(rng)
    latent, phys = module.model.forward_latent(batch)
    expected = sum(
        w * masked_loss(latent[p], norms[p].normalize(batch.targets[p].double()).float(), batch.masks[p])
        for p, w in (("dielectric", 1.0), ("piezoelectric", 2.0))
    )
    loss = module._shared_step(batch, "val")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the model returns physical units: its output map denormalizes the latent output
    for p in IRREPS:
        assert torch.allclose(module(batch)[p].double(), norms[p].denormalize(latent[p].double()), atol=1e-5)
    # normalizer state is part of the model's state_dict (self-contained checkpoints) and round-trips
    state = module.state_dict()
    assert torch.equal(state["model.outputs.dielectric.scale"], norms["dielectric"].scale)
    fresh = TensorLightningModule(IRREPS, TINY_MODEL)  # placeholders until the state is loaded
    fresh.load_state_dict(state)
    for p in IRREPS:
        assert torch.equal(fresh.normalizer(p).shift, norms[p].shift)
        assert torch.allclose(fresh.predict_physical(batch)[p], phys[p])


def test_module_rejects_inconsistent_settings():
    norms = _normalizers(np.random.default_rng(1))
    with pytest.raises(ValueError, match="not trained properties"):
        TensorLightningModule(IRREPS, TINY_MODEL, {"weights": {"elastic": 1.0}})
    with pytest.raises(ValueError, match="not trained properties"):
        TensorLightningModule(IRREPS, {**TINY_MODEL, "heads": {"elastic": {}}})
    with pytest.raises(ValueError, match="expected"):
        TensorLightningModule({"dielectric": "1x0e+1x2e"}, TINY_MODEL, normalizers={"dielectric": norms["piezoelectric"]})
    with pytest.raises(ValueError, match="at least one"):
        TensorLightningModule({}, TINY_MODEL)


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "none"])
def test_optimizers(scheduler):
    module = TensorLightningModule(
        IRREPS, TINY_MODEL, optim={"lr": 0.01, "scheduler": scheduler, "warmup_epochs": 2, "min_lr": 1e-4},
        max_epochs=10,
    )
    out = module.configure_optimizers()
    opt = out if scheduler == "none" else out["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    if scheduler == "cosine":
        sched = out["lr_scheduler"]["scheduler"]
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[0] == pytest.approx(0.01 / 3) and lrs[2] == pytest.approx(0.01)
        assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    if scheduler == "plateau":
        assert out["lr_scheduler"]["monitor"] == "val/loss"


def test_frozen_trunk_is_not_optimised():
    module = TensorLightningModule(IRREPS, TINY_MODEL)
    module.model.freeze_trunk()
    opt = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in module.model.trunk.parameters())
    assert all(id(p) in optimised for p in module.model.heads.parameters())


def test_config_defaults_overrides_and_validation():
    cfg = load_config(None)
    assert cfg["model"]["trunk"]["cutoff"] == cfg["data"]["cutoff"] == 5.0
    assert cfg["trainer"]["accelerator"] == "auto"
    tiny = load_config("tiny", ["trainer.max_epochs=3", "data.cutoff=3.5", "loss.weights.dielectric=0.5"])
    assert tiny["trainer"]["max_epochs"] == 3
    assert tiny["model"]["trunk"]["cutoff"] == 3.5
    assert tiny["loss"]["weights"] == {"dielectric": 0.5}
    assert tiny["data"]["properties"] == ["dielectric", "piezoelectric"]
    with pytest.raises(ValueError, match="unknown key"):
        load_config({"trainer": {"max_epoch": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        load_config({"optimizer": {}})
    with pytest.raises(ValueError, match="differs from data.cutoff"):
        load_config({"model": {"trunk": {"cutoff": 4.0}}})
    with pytest.raises(ValueError, match="loss.type"):
        load_config({"loss": {"type": "l4"}})
    with pytest.raises(ValueError, match="does not exist"):
        load_config("no_such_config.yaml")
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["trainer.devices"])


def test_pretrained_trunk_is_loaded_and_frozen(tmp_path):
    """The module copies a given ``trunk_state`` (transfer_trunk) and reads no file itself:
    ``model.pretrained_trunk`` is only recorded (fit resolves it, see test_train_fit)."""
    from irreptensor_ml.model import TensorPredictor, trunk_state

    torch.manual_seed(3)
    source = TensorPredictor(TINY_MODEL["trunk"], {"dielectric": "1x0e+1x2e"})
    missing = str(tmp_path / "not-there.pt")
    for given in (source, source.trunk, trunk_state(source), trunk_state(source.state_dict())):
        module = TensorLightningModule(
            {"piezoelectric": IRREPS["piezoelectric"]},
            {"trunk": dict(source.trunk.config), "pretrained_trunk": missing, "freeze_trunk": True},
            trunk_state=given,
        )
        assert module.model.trunk.config == source.trunk.config
        assert module.hparams["model"]["pretrained_trunk"] == missing
        assert "trunk_state" not in module.hparams
        for key, value in source.trunk.state_dict().items():
            assert torch.equal(module.model.trunk.state_dict()[key], value), key
        assert not any(p.requires_grad for p in module.model.trunk.parameters())
        assert all(p.requires_grad for p in module.model.heads.parameters())
    # without trunk_state the recorded path is not read (a restored checkpoint needs no such file)
    module = TensorLightningModule({"piezoelectric": IRREPS["piezoelectric"]},
                                   {"trunk": dict(source.trunk.config), "pretrained_trunk": missing})
    assert any(not torch.equal(module.model.trunk.state_dict()[k], v) for k, v in source.trunk.state_dict().items())
    # another architecture is refused, naming the difference
    with pytest.raises(ValueError, match="does not match the trunk architecture.*other shapes"):
        TensorLightningModule({"piezoelectric": IRREPS["piezoelectric"]},
                              {"trunk": {**TINY_MODEL["trunk"], "num_basis": 6}}, trunk_state=source)
    with pytest.raises(ValueError, match="unknown model setting"):
        TensorLightningModule(IRREPS, {**TINY_MODEL, "freeze": True})
    with pytest.raises(ValueError, match="does not exist"):
        load_config({"model": {"pretrained_trunk": str(tmp_path / "nope.pt")}})
