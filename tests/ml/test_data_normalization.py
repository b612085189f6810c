"""Tests for irreptensor_ml.data.normalization.IrrepNormalizer."""

from __future__ import annotations

import io

import pytest
import torch
from e3nn import o3

from irreptensor_ml.data.normalization import IrrepNormalizer

ELASTIC = "2x0e+2x2e+1x4e"
PIEZO = "2x1o+1x2o+1x3o"


def _data(n: int, irreps: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, o3.Irreps(irreps).dim, generator=g, dtype=torch.float64)
    return x * torch.linspace(1.0, 50.0, x.shape[1], dtype=torch.float64) + 7.0


def test_block_statistics_elastic() -> None:
    x = _data(200, ELASTIC)
    norm = IrrepNormalizer().fit(x, ELASTIC)
    blocks = [(0, 1), (1, 2), (2, 7), (7, 12), (12, 21)]
    for k, (a, b) in enumerate(blocks):
        block = x[:, a:b]
        if k < 2:  # 0e: shifted by its mean, scaled by the std
            assert torch.allclose(norm.shift[a:b], block.mean().expand(b - a))
            expected_scale = (block - block.mean()).pow(2).mean().sqrt()
        else:  # l > 0: no shift, scaled by RMS of the raw block
            assert bool((norm.shift[a:b] == 0).all())
            expected_scale = block.pow(2).mean().sqrt()
        assert torch.allclose(norm.scale[a:b], expected_scale.expand(b - a))
    y = norm.normalize(x)
    for a, b in blocks:  # every block has unit RMS after normalization
        assert float(y[:, a:b].pow(2).mean()) == pytest.approx(1.0, rel=1e-12)


def test_odd_parity_blocks_are_never_shifted() -> None:
    x = _data(50, PIEZO)
    norm = IrrepNormalizer().fit(x, PIEZO)
    assert bool((norm.shift == 0).all())


def test_round_trip_and_gradient() -> None:
    x = _data(30, ELASTIC)
    norm = IrrepNormalizer().fit(x, ELASTIC)
    y = _data(5, ELASTIC, seed=1).requires_grad_(True)
    back = norm.denormalize(norm.normalize(y))
    assert torch.allclose(back, y, rtol=1e-12, atol=1e-10)
    back.sum().backward()
    assert torch.allclose(y.grad, torch.ones_like(y))
    y32 = y.detach().float()
    assert norm.normalize(y32).dtype == torch.float32


def test_normalization_commutes_with_rotation() -> None:
    irreps = o3.Irreps(ELASTIC)
    x = _data(40, ELASTIC)
    norm = IrrepNormalizer().fit(x, ELASTIC)
    D = irreps.D_from_matrix(o3.rand_matrix(dtype=torch.float64))
    y = _data(3, ELASTIC, seed=2)
    # the 0e shift is invariant, every block scale commutes with D
    assert torch.allclose(norm.normalize(y @ D.T), norm.normalize(y) @ D.T, atol=1e-10)
    assert torch.allclose(norm.denormalize(y @ D.T), norm.denormalize(y) @ D.T, atol=1e-9)


def test_fit_uses_only_the_given_training_rows() -> None:
    train = _data(40, ELASTIC)
    held_out = _data(10, ELASTIC, seed=3) * 1000.0
    a = IrrepNormalizer().fit(train, ELASTIC)
    b = IrrepNormalizer().fit(train.clone(), ELASTIC)
    c = IrrepNormalizer().fit(torch.cat([train, held_out]), ELASTIC)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.shift, b.shift)
    assert not torch.allclose(a.scale, c.scale)


def test_state_dict_round_trip_weights_only() -> None:
    norm = IrrepNormalizer().fit(_data(20, PIEZO), PIEZO)
    buffer = io.BytesIO()
    torch.save(norm.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = IrrepNormalizer.from_state_dict(state)
    assert restored.irreps == PIEZO and restored.dim == 18
    y = _data(4, PIEZO, seed=9)
    assert torch.equal(restored.normalize(y), norm.normalize(y))


def test_errors() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        IrrepNormalizer().normalize(torch.zeros(2, 21))
    with pytest.raises(ValueError, match=r"shape \(n, 21\)"):
        IrrepNormalizer().fit(torch.zeros(5, 18), ELASTIC)
    with pytest.raises(ValueError, match="no rows"):
        IrrepNormalizer().fit(torch.zeros(0, 21), ELASTIC)
    x = _data(5, ELASTIC)
    x[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        IrrepNormalizer().fit(x, ELASTIC)
    norm = IrrepNormalizer().fit(_data(5, ELASTIC), ELASTIC)
    with pytest.raises(ValueError, match="does not match irreps"):
        norm.normalize(torch.zeros(3, 18))
    with pytest.raises(ValueError, match="lacks key"):
        IrrepNormalizer.from_state_dict({"irreps": ELASTIC})
    bad = norm.state_dict()
    bad["scale"] = bad["scale"][:5]
    with pytest.raises(ValueError, match="do not match"):
        IrrepNormalizer.from_state_dict(bad)


def test_zero_block_keeps_unit_scale() -> None:
    x = _data(10, PIEZO)
    x[:, 11:18] = 0.0  # the whole 3o block (components 11..17)
    norm = IrrepNormalizer().fit(x, PIEZO)
    assert bool((norm.scale[11:18] == 1.0).all())
