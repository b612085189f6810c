"""Unit tests of the model building blocks: radial basis, heads, pooling, predictor API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from pymatgen.core import Lattice, Structure

from irreptensor_ml.data import collate, structure_to_graph
from irreptensor_ml.model import (
    EquivariantTrunk,
    InteractionBlock,
    RadialBasis,
    TensorHead,
    TensorPredictor,
    mean_pool,
    polynomial_envelope,
)

CUTOFF = 4.0
TINY_TRUNK = {
    "embedding_dim": 8,
    "irreps_hidden": "8x0e+2x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e+1x4e+1x4o",
    "num_layers": 3,
    "cutoff": CUTOFF,
    "num_basis": 4,
    "radial_hidden": [8],
    "avg_num_neighbors": 10.0,
}


def _batch(structures, dtype=torch.float32):
    return collate([(structure_to_graph(s, CUTOFF), {}) for s in structures]).to(dtype)


@pytest.fixture(scope="module")
def crystals() -> list[Structure]:
    rng = np.random.default_rng(0)
    out = []
    for n in (2, 4):
        lat = Lattice(np.diag([3.6, 3.9, 4.2]) + rng.uniform(-0.4, 0.4, (3, 3)))
        out.append(Structure(lat, ["Si", "O", "Ti", "Ba"][:n], rng.uniform(0, 1, (n, 3))))
    return out


def test_envelope_is_smooth_at_cutoff():
    """u(1 - d) ~ C d^3 / 3 and u'(1 - d) ~ -C d^2 with C = p(p+1)(p+2)/2: triple zero at 1."""
    p, d = 6, 1e-3
    c = p * (p + 1) * (p + 2) / 2
    x = torch.tensor([0.0, 0.5, 1.0 - d, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    u = polynomial_envelope(x, p)
    assert u[0].item() == pytest.approx(1.0)
    assert 0 < u[1].item() < 1
    assert u[2].item() == pytest.approx(c * d**3 / 3, rel=1e-2)
    assert u[3].item() == 0.0 and u[4].item() == 0.0
    (grad,) = torch.autograd.grad(u.sum(), x)
    assert grad[2].item() == pytest.approx(-c * d**2, rel=1e-2)
    assert grad[3].item() == 0.0
    with pytest.raises(ValueError, match="p must be >= 2"):
        polynomial_envelope(x, p=1)


def test_radial_basis_vanishes_beyond_cutoff():
    rb = RadialBasis(cutoff=5.0, num_basis=6)
    r = torch.tensor([0.8, 2.5, 4.9999, 5.0, 6.0], dtype=torch.float64)
    e = rb(r)
    assert e.shape == (5, 6)
    assert e[:2].abs().max() > 0.1
    assert e[2].abs().max() < 1e-15
    assert torch.all(e[3:] == 0)
    with pytest.raises(ValueError, match="cutoff"):
        RadialBasis(cutoff=0.0)
    with pytest.raises(ValueError, match="num_basis"):
        RadialBasis(cutoff=5.0, num_basis=0)


def test_prediction_continuous_when_neighbour_crosses_cutoff():
    """Two atoms in a big box: moving one across the cutoff changes the output continuously."""
    torch.manual_seed(0)
    model = TensorPredictor(TINY_TRUNK, {"dielectric": "1x0e+1x2e"}).double().eval()
    lat = Lattice.cubic(12.0)

    def out(d: float) -> torch.Tensor:
        s = Structure(lat, ["Si", "O"], [[0, 0, 0], [d / 12.0 * 0.6, d / 12.0 * 0.8, 0]], coords_are_cartesian=False)
        with torch.no_grad():
            return model(_batch([s], torch.float64))["dielectric"]

    inside, outside, far = out(CUTOFF - 1e-4), out(CUTOFF + 1e-4), out(CUTOFF + 1.0)
    assert torch.allclose(outside, far, atol=1e-14)  # beyond the cutoff the pair does not interact
    assert (inside - outside).abs().max() < 1e-12  # envelope ~ (1e-4 / 4)^6
    assert (out(CUTOFF - 1.0) - far).abs().max() > 1e-6  # but the pair does matter inside


def test_mean_pool_groups_and_handles_empty_graph():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    index = torch.tensor([0, 0, 2])
    pooled = mean_pool(x, index, 3)
    assert torch.equal(pooled, torch.tensor([[2.0, 3.0], [0.0, 0.0], [10.0, 0.0]]))
    with pytest.raises(ValueError, match="index has 2 entries"):
        mean_pool(x, index[:2], 3)


def test_head_validates_irreps():
    with pytest.raises(ValueError, match="do not carry"):
        TensorHead("8x0e+2x1o", "1x0e+1x2e")
    with pytest.raises(ValueError, match="bad irreps"):
        TensorHead("8x0e", "not-irreps")
    head = TensorHead("8x0e+2x1o+2x2e", "1x0e+1x2e")
    with pytest.raises(ValueError, match="channels"):
        head(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), 1)


def test_trunk_validates_configuration():
    with pytest.raises(ValueError, match="num_layers"):
        EquivariantTrunk(num_layers=0)
    with pytest.raises(ValueError, match="scalar"):
        EquivariantTrunk(irreps_hidden="4x1o")
    with pytest.raises(ValueError, match="irreps string"):
        EquivariantTrunk(irreps_hidden="4xfoo")
    with pytest.raises(ValueError, match="cannot be reached"):  # 0o/4o need 3 layers at lmax_sh=2
        EquivariantTrunk(**{**TINY_TRUNK, "num_layers": 2})
    with pytest.raises(ValueError, match="cannot be reached"):
        InteractionBlock(o3.Irreps("4x0e"), o3.Irreps("4x0e+1x3o"), o3.Irreps("0e+1o"), 4, [8], 10.0)


def test_trunk_rejects_unknown_species(crystals):
    trunk = EquivariantTrunk(**TINY_TRUNK)
    batch = _batch(crystals)
    batch.species = batch.species.clone()
    batch.species[0] = 150
    with pytest.raises(ValueError, match="atomic numbers"):
        trunk(batch)


def test_trunk_output_irreps_and_shape(crystals):
    trunk = EquivariantTrunk(**TINY_TRUNK)
    batch = _batch(crystals)
    x = trunk(batch)
    assert x.shape == (batch.species.shape[0], trunk.irreps_out.dim)
    for ir in ("0e", "0o", "1o", "1e", "2e", "2o", "3o", "3e", "4e", "4o"):
        assert o3.Irrep(ir) in trunk.irreps_out
    # every irrep channel carries signal (no dead block from an unreachable path)
    for (mul, ir), sl in zip(trunk.irreps_out, trunk.irreps_out.slices()):
        assert x[:, sl].abs().max() > 0, f"{mul}x{ir} is identically zero"


def test_freeze_trunk_and_add_head(crystals):
    torch.manual_seed(0)
    model = TensorPredictor(TINY_TRUNK, {"dielectric": "1x0e+1x2e"})
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    model.freeze_trunk()
    head = model.add_head("elastic", "2x0e+2x2e+1x4e")
    assert set(model.heads) == {"dielectric", "elastic"}
    assert model.config["heads"]["elastic"]["irreps_out"] == "2x0e+2x2e+1x4e"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(_batch(crystals))
    assert out["elastic"].shape == (2, 21)
    (out["elastic"].pow(2).sum() + out["dielectric"].pow(2).sum()).backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in head.parameters())
    opt.step()
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    model.freeze_trunk(False)
    assert all(p.requires_grad for p in model.trunk.parameters())
    with pytest.raises(ValueError, match="property name"):
        model.add_head("a.b", "1x0e")


def test_add_head_uses_irreptensor_irreps_by_default():
    model = TensorPredictor(TINY_TRUNK, {"piezoelectric": None})
    assert str(model.heads["piezoelectric"].irreps_out) == "2x1o+1x2o+1x3o"


def test_from_config_roundtrip(crystals):
    torch.manual_seed(1)
    model = TensorPredictor(TINY_TRUNK, {"dielectric": "1x0e+1x2e", "piezoelectric": "2x1o+1x2o+1x3o"})
    clone = TensorPredictor.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    batch = _batch(crystals)
    a, b = model(batch), clone(batch)
    for prop in a:
        assert torch.equal(a[prop], b[prop])
    with pytest.raises(ValueError, match="unknown keys"):
        TensorPredictor.from_config({"trunk": {}, "head": {}})


def test_element_features_add_a_fixed_prior_to_the_embedding(tmp_path):
    """The element table is standardized pymatgen data, travels in the state_dict, and only a
    trunk built with element_features has it (earlier configs are unchanged)."""
    from irreptensor_ml.model.elements import NUM_FEATURES, element_table
    from irreptensor_ml.model.trunk import EquivariantTrunk

    table = element_table(101)
    assert table.shape == (101, NUM_FEATURES)
    assert torch.all(table[0] == 0) and torch.isfinite(table).all()
    assert table[8, 0] > table[56, 0]  # O is more electronegative than Ba
    assert abs(float(table[1:95, 0].mean())) < 0.2
    kw = {"embedding_dim": 8, "irreps_hidden": "8x0e+2x1o", "num_layers": 1, "cutoff": 4.0, "num_basis": 4,
          "radial_hidden": [8]}
    plain = EquivariantTrunk(**kw)
    assert "element_features" not in plain.config and not hasattr(plain, "element_table")
    trunk = EquivariantTrunk(**kw, element_features=True)
    assert trunk.config["element_features"] is True
    assert torch.equal(trunk.state_dict()["element_table"], table)
    rebuilt = EquivariantTrunk(**trunk.config)
    rebuilt.load_state_dict(trunk.state_dict())
    assert torch.equal(rebuilt.element_table, table)


@pytest.mark.parametrize("lmax_sh, reaches", [(2, False), (3, False), (4, True)])
def test_cubic_crystal_needs_lmax_sh_4(lmax_sh: int, reaches: bool) -> None:
    """At sites of cubic symmetry every l = 1, 2, 3 feature vanishes, so the 4e block of the elastic
    tensor (the cubic anisotropy) of rock salt is exactly zero unless the edge harmonics reach l = 4."""
    from irreptensor_ml.model import EquivariantTrunk, TensorHead

    torch.manual_seed(0)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = collate([(structure_to_graph(nacl, 4.0), {})]).to(torch.float64)
    trunk = EquivariantTrunk(embedding_dim=8, irreps_hidden="8x0e+2x1o+2x2e+2x3o+2x4e", num_layers=2,
                             lmax_sh=lmax_sh, message_lmax=2, cutoff=4.0, avg_num_neighbors=10.0).double()
    head = TensorHead(trunk.irreps_out, "2x0e+2x2e+1x4e").double()
    with torch.no_grad():
        out = head(trunk(batch), batch.batch, 1)[0]
    block_4e = out[-9:].norm().item()
    assert (block_4e > 1e-6) == reaches, block_4e
    assert out[2:-9].norm().item() < 1e-9  # no 2e anisotropy is allowed in a cubic crystal
