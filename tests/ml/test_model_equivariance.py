"""Symmetry tests of the predictor: O(3) equivariance, translation / permutation / supercell
invariance, and the physical consequence that a centrosymmetric crystal has zero
odd-parity (piezoelectric) output.  All in float64 with a small model.

The expected transformation uses ``irreptensor.wigner_D(R, kind)``, which is exact to ~1e-15 in
float64.  It is the same real basis as ``e3nn.o3.Irreps(irreps).D_from_matrix(R)``, but e3nn's
matrix -> Euler-angle conversion loses precision (``D_from_matrix(R)`` for ``1o`` differs from
``R`` by ~1e-7 in float64), so e3nn's matrices can only be compared at ~1e-5
(:func:`test_exact_wigner_matches_e3nn`) and would hide small equivariance bugs at 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from pymatgen.core import Lattice, Structure

import irreptensor as it
from irreptensor_ml.data import collate, structure_to_graph
from irreptensor_ml.model import TensorPredictor

CUTOFF = 4.0
TINY_TRUNK = {
    "embedding_dim": 8,
    "irreps_hidden": "8x0e+2x0o+2x1o+2x1e+2x2e+2x2o+1x3o+1x3e+1x4e+1x4o",
    "num_layers": 3,
    "lmax_sh": 2,
    "cutoff": CUTOFF,
    "num_basis": 4,
    "radial_hidden": [8],
    "avg_num_neighbors": 10.0,
}
HEADS = {
    "dielectric": "1x0e+1x2e",
    "piezoelectric": "2x1o+1x2o+1x3o",
    "elastic": "2x0e+2x2e+1x4e",
}


def random_structure(rng: np.random.Generator, n_atoms: int) -> Structure:
    """Random triclinic cell with ``n_atoms`` atoms at least 1.2 Angstrom apart."""
    while True:
        matrix = np.diag(rng.uniform(3.0, 4.5, 3)) + rng.uniform(-0.6, 0.6, (3, 3))
        frac = rng.uniform(0.0, 1.0, (n_atoms, 3))
        species = rng.choice([1, 8, 14, 22, 56, 83], n_atoms).tolist()
        s = Structure(Lattice(matrix), species, frac)
        if n_atoms == 1 or s.distance_matrix[np.triu_indices(n_atoms, 1)].min() > 1.2:
            return s


def predict(model: TensorPredictor, structures: list[Structure]) -> dict[str, torch.Tensor]:
    batch = collate([(structure_to_graph(s, CUTOFF), {}) for s in structures]).to(torch.float64)
    with torch.no_grad():
        return model(batch)


def random_rotation(rng: np.random.Generator, improper: bool) -> torch.Tensor:
    """Haar-random proper rotation (QR of a Gaussian matrix), negated if ``improper``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    R = torch.from_numpy(-q if improper else q)
    return R.to(torch.float64)


@pytest.mark.parametrize("improper", [False, True])
def test_exact_wigner_matches_e3nn(improper):
    """The exact D used below is e3nn's basis (up to e3nn's ~1e-7 Euler-angle round-off)."""
    R = random_rotation(np.random.default_rng(11), improper)
    for prop, irreps in HEADS.items():
        assert torch.allclose(wigner(prop, R), o3.Irreps(irreps).D_from_matrix(R), atol=1e-5)
        assert torch.allclose(wigner(prop, R) @ wigner(prop, R).T, torch.eye(o3.Irreps(irreps).dim, dtype=torch.float64), atol=1e-13)


@pytest.fixture(scope="module")
def model() -> TensorPredictor:
    """Built with float64 as default dtype: e3nn computes its Clebsch-Gordan buffers in the
    default dtype at construction, so a float32-built model cast with ``.double()`` carries
    float32-rounded coefficients (equivariant only to ~1e-8)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return TensorPredictor(TINY_TRUNK, HEADS).eval()
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def structures() -> list[Structure]:
    rng = np.random.default_rng(1)
    return [random_structure(rng, n) for n in (1, 3, 5)]


def wigner(prop: str, R: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(it.wigner_D(R, prop), dtype=torch.float64)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    scale = expected.abs().max().item()
    assert scale > 1e-6, "reference prediction is (nearly) zero: test would be vacuous"
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


def test_outputs_are_nontrivial(model, structures):
    out = predict(model, structures)
    for prop, irreps in HEADS.items():
        y = out[prop]
        assert y.shape == (len(structures), o3.Irreps(irreps).dim)
        assert torch.isfinite(y).all()
        # every irrep block of the multi-atom (P1) crystals is non-zero
        for sl in o3.Irreps(irreps).slices():
            assert y[1:, sl].norm(dim=-1).min() > 1e-8, (prop, sl)


@pytest.mark.parametrize("improper", [False, True])
def test_rotation_equivariance(model, structures, improper):
    """Rotate positions, lattice and periodic shifts by R: irreps transform with D(R)."""
    rng = np.random.default_rng(2 + int(improper))
    batch = collate([(structure_to_graph(s, CUTOFF), {}) for s in structures]).to(torch.float64)
    with torch.no_grad():
        ref = model(batch)
        for _ in range(3):
            R = random_rotation(rng, improper)
            rotated = collate(
                [(structure_to_graph(s, CUTOFF), {}) for s in structures]
            ).to(torch.float64)
            rotated.pos = batch.pos @ R.T
            rotated.edge_shift = batch.edge_shift @ R.T
            rotated.lattice = batch.lattice @ R.T
            out = model(rotated)
            for prop in HEADS:
                _assert_close(out[prop], ref[prop] @ wigner(prop, R).T)


def test_rotation_equivariance_rebuilt_structure(model, structures):
    """Same check through pymatgen: rotate the Structure itself and rebuild its graph."""
    rng = np.random.default_rng(7)
    R = random_rotation(rng, improper=True)
    rotated = [
        Structure(Lattice(s.lattice.matrix @ R.numpy().T), s.species, s.frac_coords)
        for s in structures
    ]
    ref, out = predict(model, structures), predict(model, rotated)
    for prop in HEADS:
        _assert_close(out[prop], ref[prop] @ wigner(prop, R).T)


def test_translation_invariance(model, structures):
    """Translate all atoms (wrapping into the cell changes edges' image shifts): same output."""
    shifted = []
    for s in structures:
        t = s.copy()
        t.translate_sites(list(range(len(t))), [0.37, -0.21, 0.55], frac_coords=True, to_unit_cell=True)
        shifted.append(t)
    ref, out = predict(model, structures), predict(model, shifted)
    for prop in HEADS:
        _assert_close(out[prop], ref[prop])


def test_permutation_invariance(model, structures):
    rng = np.random.default_rng(3)
    permuted = []
    for s in structures:
        order = rng.permutation(len(s))
        permuted.append(Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order]))
    ref, out = predict(model, structures), predict(model, permuted)
    for prop in HEADS:
        _assert_close(out[prop], ref[prop])


def test_supercell_invariance(model, structures):
    """Mean pooling makes predictions intensive: a 2x1x2 supercell predicts the same tensor."""
    supercells = [s.make_supercell([2, 1, 2], in_place=False) for s in structures]
    ref, out = predict(model, structures), predict(model, supercells)
    for prop in HEADS:
        _assert_close(out[prop], ref[prop])


def test_centrosymmetric_crystal_has_zero_odd_output(model):
    """Rock salt is centrosymmetric: equivariance under inversion forces the odd-parity
    (piezoelectric) output to vanish while even-parity outputs stay non-zero."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # an off-axis frame so that no component vanishes by accident of orientation
    R = random_rotation(np.random.default_rng(5), improper=False).numpy()
    nacl = Structure(Lattice(nacl.lattice.matrix @ R.T), nacl.species, nacl.frac_coords)
    out = predict(model, [nacl])
    scalar = out["elastic"][0, :2].abs().max().item()
    assert scalar > 1e-6
    assert out["piezoelectric"].abs().max().item() <= 1e-10 * scalar


def test_batch_composition_does_not_matter(model, structures):
    """Predicting crystals one by one equals predicting them in one batch."""
    together = predict(model, structures)
    alone = [predict(model, [s]) for s in structures]
    for prop in HEADS:
        _assert_close(torch.cat([a[prop] for a in alone]), together[prop])
