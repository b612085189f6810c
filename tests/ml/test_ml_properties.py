"""Property tests of the ML pieces with drawn values (hypothesis): the irrep normalizer, the masked loss and
the collate masks, alone and through the Lightning module's loss.

The values are drawn by ``tests/strategies.py`` (``finite_arrays``: bounded finite floats at several
magnitudes), not generated from seeds, so hypothesis shrinks a failure to the numbers that cause it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from e3nn import o3
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from irreptensor_ml.data.batch import collate
from irreptensor_ml.data.graphs import CrystalGraph
from irreptensor_ml.data.normalization import IrrepNormalizer
from irreptensor_ml.train.module import TensorLightningModule, masked_loss
from strategies import finite_arrays, rotations

EPS = float(np.finfo(np.float64).eps)
DENORM = 2.0**-1074  # the smallest subnormal float64

#: Magnitudes of physical targets and predictions in these tests: from below the normalizer's zero-RMS
#: threshold (1e-12) to well above any physical tensor, with squares that stay finite (see the xfail below).
ML_MAGNITUDES = (1e-13, 1e-3, 1.0, 1e3, 1e8)

#: Irreps layouts of the targets, plus one with a pseudoscalar (``0o``, never shifted) and odd parities.
IRREPS = ["1x0e+1x2e", "2x1o+1x2o+1x3o", "2x0e+2x2e+1x4e", "1x0e+1x0o+1x1e+1x2o"]
DIMS = {"dielectric": 6, "piezoelectric": 18, "elastic": 21}
LOSS_KINDS = ["mse", "smooth_l1", "frobenius", "log", "relative", "relative_sign_free"]

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _blocks(irreps: str):
    """``(slice, l, p)`` of every irrep instance of ``irreps``."""
    out, start = [], 0
    for mul, ir in o3.Irreps(irreps):
        for _ in range(mul):
            out.append((slice(start, start + ir.dim), ir.l, ir.p))
            start += ir.dim
    return out


# ------------------------------------------------------------------------------------------ normalizer


@FAST
@given(data=st.data(), irreps=st.sampled_from(IRREPS), n=st.integers(1, 6))
def test_normalizer_fit_normalize_denormalize_round_trip(data, irreps, n):
    """Fit on drawn training rows, then for drawn rows x and y: denormalize(normalize(x)) == x and
    normalize(denormalize(y)) == y to a few ulps; the fitted shift sits only on the 0e scalars and the
    scale is positive and constant per block; the normalized training rows have RMS 1 per block (mean 0
    on the 0e scalars) wherever the block is not numerically zero; the state dict rebuilds it exactly."""
    dim = o3.Irreps(irreps).dim
    x_train = data.draw(finite_arrays((n, dim), ML_MAGNITUDES), label="x_train")
    x = _t(data.draw(finite_arrays((3, dim), ML_MAGNITUDES), label="x"))
    y = _t(data.draw(finite_arrays((3, dim), (1.0, 1e3)), label="y"))
    norm = IrrepNormalizer().fit(x_train, irreps)
    shift, scale = norm.shift, norm.scale
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
    xt = _t(x_train)
    for sl, l, p in _blocks(irreps):
        assert bool((scale[sl] == scale[sl][0]).all())
        if not (l == 0 and p == 1):
            assert bool((shift[sl] == 0).all())
        dev = xt[:, sl] - shift[sl]
        rms = float(dev.pow(2).mean().sqrt())
        z = norm.normalize(xt)[:, sl]
        if rms > 1e-12:
            assert float(z.pow(2).mean().sqrt()) == pytest.approx(1.0, abs=1e-12)
            if l == 0 and p == 1:  # centred: the mean is zero up to the rounding of the mean itself
                assert abs(float(z.mean())) <= (2 * n + 4) * EPS * float(xt[:, sl].abs().max()) / rms
        else:
            assert bool((scale[sl] == 1).all())

    # a few ulps, plus the absolute error of an intermediate that falls into the subnormal range (tiny
    # values: x / scale or y * scale below 2.2e-308 keeps fewer bits), carried through the other operation
    back = norm.denormalize(norm.normalize(x))
    assert bool(((back - x).abs() <= 4 * EPS * (x.abs() + shift.abs()) + DENORM * scale).all())
    again = norm.normalize(norm.denormalize(y))
    assert bool(((again - y).abs() <= 4 * EPS * (y.abs() + shift.abs() / scale) + DENORM / scale).all())

    rebuilt = IrrepNormalizer.from_state_dict(norm.state_dict())
    assert torch.equal(rebuilt.normalize(x), norm.normalize(x))
    assert torch.equal(rebuilt.denormalize(y), norm.denormalize(y))


@FAST
@given(data=st.data(), irreps=st.sampled_from(IRREPS), R=rotations())
def test_normalizer_commutes_with_rotations_and_reflections(data, irreps, R):
    """normalize(x D(R)^T) == normalize(x) D(R)^T for drawn x and drawn proper or improper R: one scale per
    block and a shift on the 0e scalars only (a pseudoscalar 0o flips sign under a reflection)."""
    dim = o3.Irreps(irreps).dim
    norm = IrrepNormalizer().fit(data.draw(finite_arrays((4, dim), ML_MAGNITUDES), label="x_train"), irreps)
    x = _t(data.draw(finite_arrays((3, dim), ML_MAGNITUDES), label="x"))
    D = o3.Irreps(irreps).D_from_matrix(torch.as_tensor(R))
    lhs = norm.normalize(x @ D.T)
    rhs = norm.normalize(x) @ D.T
    bound = 64 * dim * EPS * (float(x.abs().max()) + float(norm.shift.abs().max())) / float(norm.scale.min())
    assert float((lhs - rhs).abs().max()) <= bound


def test_normalizer_fit_on_huge_but_finite_targets_gives_a_finite_scale():
    """The squares of 1e160 overflow; the scale must still be the finite RMS (round trip exact-ish)."""
    x = torch.tensor([[1.0, 1e160, 0.0, 0.0, 0.0, 0.0], [2.0, -1e160, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    norm = IrrepNormalizer().fit(x, "1x0e+1x2e")
    assert bool(torch.isfinite(norm.scale).all())
    assert float(norm.scale[1]) == pytest.approx(1e160 * 0.2**0.5, rel=1e-12)  # 2 of 10 entries are +-1e160
    assert torch.allclose(norm.denormalize(norm.normalize(x)), x, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ masked loss


def _loss_kwargs(data, kind: str, dim: int) -> dict:
    kw = {}
    if kind in ("frobenius", "log"):
        kw["scale"] = _t(data.draw(arrays(np.float64, dim, elements=st.floats(0.01, 100.0)), label="scale"))
    if kind in ("relative", "relative_sign_free"):
        kw["floor"] = data.draw(st.floats(1e-3, 10.0), label="floor")
    if kind == "smooth_l1":
        kw["beta"] = data.draw(st.floats(0.05, 5.0), label="beta")
    return kw


def _draw_rows(data):
    """Batch size, row width and a drawn mask."""
    batch = data.draw(st.integers(1, 6), label="B")
    dim = data.draw(st.integers(1, 8), label="dim")
    mask = torch.as_tensor(data.draw(arrays(np.bool_, batch), label="mask"))
    return batch, dim, mask


@FAST
@given(data=st.data(), kind=st.sampled_from(LOSS_KINDS))
def test_a_masked_out_row_never_changes_the_loss_or_its_gradient(data, kind):
    """Replacing the prediction and target of masked-out rows by other drawn values leaves the loss and
    the gradient of the kept rows bit-for-bit unchanged; masked-out rows get a zero gradient."""
    batch, dim, mask = _draw_rows(data)
    kw = _loss_kwargs(data, kind, dim)
    pred = _t(data.draw(finite_arrays((batch, dim), ML_MAGNITUDES), label="pred"))
    target = _t(data.draw(finite_arrays((batch, dim), ML_MAGNITUDES), label="target"))
    other_pred = _t(data.draw(finite_arrays((batch, dim), ML_MAGNITUDES), label="other_pred"))
    other_target = _t(data.draw(finite_arrays((batch, dim), ML_MAGNITUDES), label="other_target"))
    keep = mask[:, None]
    results = []
    for p, t in ((pred, target), (torch.where(keep, pred, other_pred), torch.where(keep, target, other_target))):
        p = p.clone().requires_grad_(True)
        loss = masked_loss(p, t, mask, kind, **kw)
        loss.backward()
        results.append((loss.detach(), p.grad))
    (l1, g1), (l2, g2) = results
    assert torch.equal(l1, l2)
    assert torch.equal(g1, g2)
    assert bool((g1[~mask] == 0).all())
    assert bool(torch.isfinite(l1)) and bool(torch.isfinite(g1).all())


@FAST
@given(data=st.data(), kind=st.sampled_from(LOSS_KINDS))
def test_the_loss_is_minimal_exactly_when_pred_equals_target(data, kind):
    """``mse``/``smooth_l1``: the loss is 0 iff pred == target on every kept row. The norm-based kinds carry
    a 1e-12 regulariser under the square root (finite gradient at a perfect prediction), so there the loss
    equals its value at pred == target iff they agree (``relative_sign_free``: agree up to the sign), and
    exceeds it as soon as a kept row differs (by >= 1e-6 per differing component, so that the difference
    is not below the regulariser's resolution)."""
    batch, dim, mask = _draw_rows(data)
    kw = _loss_kwargs(data, kind, dim)
    target = _t(data.draw(finite_arrays((batch, dim), (1.0, 1e3)), label="target"))
    nonzero = st.floats(1e-6, 1e3).flatmap(lambda v: st.sampled_from([v, -v]))
    delta = _t(data.draw(arrays(np.float64, (batch, dim), elements=st.one_of(st.just(0.0), nonzero)),
                         label="delta"))
    pred = target + delta
    at_target = masked_loss(target, target, mask, kind, **kw)
    loss = masked_loss(pred, target, mask, kind, **kw)
    if kind in ("mse", "smooth_l1"):
        assert float(at_target) == 0.0
    gap = (pred - target).abs().amax(dim=-1)
    if kind == "relative_sign_free":
        gap = torch.minimum(gap, (pred + target).abs().amax(dim=-1))
    kept_gap = gap[mask]
    if bool((kept_gap == 0).all()):
        assert torch.equal(loss, at_target)
    else:
        # (target + delta - target is delta to an ulp of target; pred + target may cancel to a tiny residue)
        assume(float(kept_gap.max()) >= 5e-7)
        assert float(loss) > float(at_target)


@FAST
@given(data=st.data(), kind=st.sampled_from(["relative", "relative_sign_free"]),
       c=st.floats(1e-3, 1e3))
def test_the_relative_loss_is_scale_invariant(data, kind, c):
    """loss(c pred, c target) == loss(pred, target) for c > 0 while every kept target norm stays above the
    floor at both scales, up to the 1e-12 regulariser under the square root (whose relative effect is at
    most 1e-12 / (2 min(c, 1)^2 |pred - target|^2) per row) and a few ulps."""
    batch, dim, mask = _draw_rows(data)
    mask[data.draw(st.integers(0, batch - 1), label="a kept row")] = True
    target = _t(data.draw(finite_arrays((batch, dim), (1.0, 1e3)), label="target"))
    pred = _t(data.draw(finite_arrays((batch, dim), (1.0, 1e3)), label="pred"))
    norms = target.norm(dim=-1)[mask]
    assume(float(norms.min()) > 0)
    floor = data.draw(st.floats(0.01, 1.0), label="floor fraction") * float(norms.min()) * min(c, 1.0)
    err = (pred - target).norm(dim=-1)
    if kind == "relative_sign_free":
        err = torch.minimum(err, (pred + target).norm(dim=-1))
    min_err = float(err[mask].min()) * min(c, 1.0)
    assume(min_err >= 1e-3)  # where the regulariser is negligible: rtol below 5e-7
    rtol = 1e-12 / (2 * min_err**2) + 16 * EPS
    ref = float(masked_loss(pred, target, mask, kind, floor=floor))
    scaled = float(masked_loss(c * pred, c * target, mask, kind, floor=floor))
    assert scaled == pytest.approx(ref, rel=rtol)


@pytest.mark.parametrize("kind", ["mse", "frobenius", "relative"])
def test_a_masked_out_row_with_a_non_finite_loss_leaves_the_loss_finite(kind):
    pred = torch.tensor([[1.0, 2.0], [1e20, 0.0]], dtype=torch.float32)  # (1e20)^2 overflows float32
    target = torch.zeros(2, 2, dtype=torch.float32)
    mask = torch.tensor([True, False])
    kw = {"scale": torch.ones(2)} if kind == "frobenius" else {"floor": 1.0} if kind == "relative" else {}
    assert bool(torch.isfinite(masked_loss(pred, target, mask, kind, **kw)))
    # a NaN placeholder target of a masked-out row: finite loss and a finite, zero gradient there
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [float("nan"), 0.0]])
    loss = masked_loss(pred, target, mask, kind, **kw)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(pred.grad).all())
    assert pred.grad[1].abs().max().item() == 0.0


# ------------------------------------------------------------------------------------------ collate masks


def _graph(n_atoms: int, k: int) -> CrystalGraph:
    return CrystalGraph(
        species=torch.full((n_atoms,), 14, dtype=torch.long),
        pos=torch.arange(3.0 * n_atoms, dtype=torch.float64).reshape(n_atoms, 3) * 0.5,
        lattice=torch.eye(3, dtype=torch.float64) * 5.0,
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_shift=torch.zeros(0, 3, dtype=torch.float64),
        material_id=f"m{k}",
    )


@st.composite
def samples(draw, props=tuple(DIMS), min_size=1, max_size=5):
    """``(graph, {prop: drawn target})`` samples, each with a drawn subset of ``props`` (possibly none)."""
    n = draw(st.integers(min_size, max_size), label="batch size")
    out = []
    for k in range(n):
        present = draw(st.lists(st.sampled_from(props), unique=True), label=f"properties of sample {k}")
        targets = {p: _t(draw(finite_arrays((DIMS[p],), ML_MAGNITUDES), label=f"{p} of sample {k}"))
                   for p in sorted(present)}
        out.append((_graph(draw(st.integers(1, 3)), k), targets))
    return out


@FAST
@given(samples())
def test_collate_masks_exactly_the_missing_properties(batch_samples):
    """Every property of ``dims`` is in the batch; mask[b] is True iff sample b has the property, its row is
    the drawn target bit for bit, and rows of samples lacking it are zero. Without ``dims`` the batch holds
    exactly the properties present in some sample."""
    batch = collate(batch_samples, DIMS)
    assert sorted(batch.targets) == sorted(batch.masks) == sorted(DIMS)
    assert batch.num_graphs == len(batch_samples)
    for p, d in DIMS.items():
        assert batch.targets[p].shape == (len(batch_samples), d) and batch.masks[p].dtype == torch.bool
        for b, (_, targets) in enumerate(batch_samples):
            assert bool(batch.masks[p][b]) == (p in targets)
            if p in targets:
                assert torch.equal(batch.targets[p][b], targets[p])
            else:
                assert bool((batch.targets[p][b] == 0).all())
    present = sorted({p for _, targets in batch_samples for p in targets})
    if present:
        assert sorted(collate(batch_samples).targets) == present


@FAST
@given(batch_samples=samples(), data=st.data(), kind=st.sampled_from(LOSS_KINDS))
def test_a_missing_property_never_enters_the_loss(batch_samples, data, kind):
    """For each property, the masked loss of the collated batch equals the loss over the samples that
    have the property alone, and does not change when the rows of the others are filled with anything."""
    batch = collate(batch_samples, DIMS)
    for p, d in DIMS.items():
        mask = batch.masks[p]
        kw = _loss_kwargs(data, kind, d)
        pred = _t(data.draw(finite_arrays((batch.num_graphs, d), ML_MAGNITUDES), label=f"pred {p}"))
        full = masked_loss(pred, batch.targets[p], mask, kind, **kw)
        if bool(mask.any()):
            only = torch.stack([t[p] for _, t in batch_samples if p in t])
            alone = masked_loss(pred[mask], only, torch.ones(len(only), dtype=torch.bool), kind, **kw)
            assert float(full) == pytest.approx(float(alone), rel=1e-13, abs=0)
        else:
            assert float(full) == 0.0
        junk = _t(data.draw(finite_arrays((batch.num_graphs, d), ML_MAGNITUDES), label=f"junk {p}"))
        filled = torch.where(mask[:, None], batch.targets[p], junk)
        assert torch.equal(masked_loss(pred, filled, mask, kind, **kw), full)


# ------------------------------------------------------------------ through the Lightning module's loss

from test_train_module import IRREPS as MODULE_IRREPS, TINY_MODEL  # noqa: E402  (one tiny model for both files)


@pytest.fixture(scope="module")
def module():
    """A tiny two-property module with linear output maps; its forward pass is replaced in the test by
    drawn predictions (the loss assembly is under test, not the network)."""
    gen = torch.Generator().manual_seed(0)
    norms = {p: IrrepNormalizer().fit(torch.randn(20, DIMS[p], generator=gen, dtype=torch.float64) * 2 + 3, s)
             for p, s in MODULE_IRREPS.items()}
    torch.manual_seed(0)
    return TensorLightningModule(MODULE_IRREPS, TINY_MODEL, normalizers=norms).double()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_samples=samples(props=tuple(MODULE_IRREPS)), data=st.data(),
       kind=st.sampled_from(["mse", "smooth_l1", "frobenius", "relative", "relative_sign_free"]))
def test_the_module_loss_never_reads_a_missing_target(module, batch_samples, data, kind):
    """The training loss of the module (all properties, weights, output maps) is bit-for-bit the same when
    the targets and the predictions of samples lacking a property are replaced by other drawn values."""
    batch = collate(batch_samples, {p: DIMS[p] for p in MODULE_IRREPS}).to(torch.float64)
    B = batch.num_graphs
    preds = {p: _t(data.draw(finite_arrays((B, DIMS[p]), (1.0, 1e3)), label=f"pred {p}")) for p in MODULE_IRREPS}
    other = {p: _t(data.draw(finite_arrays((B, DIMS[p]), (1.0, 1e3)), label=f"other {p}")) for p in MODULE_IRREPS}
    junk = {p: _t(data.draw(finite_arrays((B, DIMS[p]), ML_MAGNITUDES), label=f"junk {p}")) for p in MODULE_IRREPS}

    def loss_of(pred, targets):
        def forward_latent(_batch):
            return dict(pred), dict(pred)  # latent and physical predictions: both drawn

        saved = (module.loss_types, module.model.forward_latent)
        module.loss_types = {p: kind for p in MODULE_IRREPS}
        module.model.forward_latent = forward_latent
        try:
            b = collate(batch_samples, {p: DIMS[p] for p in MODULE_IRREPS}).to(torch.float64)
            b.targets = targets
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # self.log outside a Trainer
                return module._shared_step(b, "val").detach()
        finally:
            module.loss_types = saved[0]
            del module.model.forward_latent  # back to the class method
            assert module.model.forward_latent.__func__ is saved[1].__func__

    ref = loss_of(preds, batch.targets)
    masks = batch.masks
    swapped_pred = {p: torch.where(masks[p][:, None], preds[p], other[p]) for p in MODULE_IRREPS}
    swapped_targets = {p: torch.where(masks[p][:, None], batch.targets[p], junk[p]) for p in MODULE_IRREPS}
    assert bool(torch.isfinite(ref))
    assert torch.equal(loss_of(swapped_pred, swapped_targets), ref)


@pytest.mark.parametrize("scale", [1e-158, 1e160])
def test_the_relative_loss_divides_by_the_true_norm_of_tiny_and_huge_targets(scale):
    """The target norm of ``relative`` is exact where its squares would underflow (1e-158: subnormal) or
    overflow (1e160: inf, which made the loss of a finite error 0)."""
    target = torch.tensor([[3.0, 4.0]], dtype=torch.float64) * scale
    pred = target + torch.tensor([[1e-10 * scale, 0.0]], dtype=torch.float64)
    loss = masked_loss(pred, target, torch.tensor([True]), "relative", floor=1e-300)
    err = float(((pred - target).pow(2).sum() + 1e-12).sqrt())
    assert float(loss) == pytest.approx(err / (5.0 * scale), rel=1e-12)
