"""Reference elastic tensors from a pretrained potential by finite strains (relaxed ions).

For each crystal: relax the cell and the ions with the potential (SevenNet-0's ASE calculator by
default), then for each of the 6 Voigt strain components ``J`` and each magnitude ``delta``
(default +-0.5 % and +-1 %) deform the cell homogeneously, relax the ions at fixed cell, and
record the stress.  The stiffness column ``C[:, J]`` is the least-squares slope of the 6 stress
components against ``delta`` (the unstrained stress is a seventh point of every fit).

Conventions (those of pymatgen's ``ElasticTensor`` and of :func:`irreptensor.from_voigt`):

- Voigt order ``xx, yy, zz, yz, xz, xy``; strains are engineering strains, so component
  ``J >= 3`` with magnitude ``delta`` is the symmetric strain ``eps_ij = eps_ji = delta / 2``;
  the deformed lattice (rows = vectors) is ``A (I + eps)``, fractional coordinates kept;
- stress positive in tension: ASE's ``atoms.get_stress()`` (``(1/V) dE/deps``, eV/Angstrom^3,
  Voigt order as above) has this sign, as has the stress pymatgen expects (the Materials
  Project workflows negate VASP's pressure-positive stress), so only the unit changes:
  ``1 eV/Angstrom^3 = 160.2176634 GPa``;
- ``C_IJ = d sigma_I / d eps_J`` in GPa, symmetrised ``(C + C^T) / 2``; the asymmetry before
  symmetrisation is reported as a quality measure.

Cost: ``1 + 6 x len(strains)`` relaxations per crystal (25 by default), each a few to a few
tens of potential evaluations.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .sevennet import load_sevennet, require_sevenn

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

__all__ = [
    "DEFAULT_STRAINS",
    "EV_PER_A3_IN_GPA",
    "FiniteStrainResult",
    "finite_strain_elastic",
    "finite_strain_elastic_many",
    "relax",
    "sevennet_calculator",
    "voigt_strain",
]

#: 1 eV/Angstrom^3 in GPa: 1.602176634e-19 J / 1e-30 m^3 = 1.602176634e11 Pa (exact, SI 2019).
EV_PER_A3_IN_GPA = 160.2176634

#: Default strain magnitudes applied to each Voigt component (dimensionless).
DEFAULT_STRAINS = (-0.01, -0.005, 0.005, 0.01)

_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def voigt_strain(component: int, delta: float) -> np.ndarray:
    """Symmetric (3, 3) strain of Voigt ``component`` (0-5) with engineering magnitude ``delta``."""
    if not 0 <= component < 6:
        raise ValueError(f"voigt_strain: component must be in 0..5, got {component}")
    i, j = _VOIGT_PAIRS[component]
    eps = np.zeros((3, 3))
    value = delta if i == j else delta / 2
    eps[i, j] = eps[j, i] = value
    return eps


def sevennet_calculator(model: str = "7net-0", device: str = "cpu") -> Any:
    """SevenNet's ASE calculator (energies eV, forces eV/Angstrom, stress eV/Angstrom^3) in
    float32, loaded offline (a name of ``SHIPPED_MODELS`` or a checkpoint path); ``ImportError``
    naming the extra without sevenn."""
    require_sevenn()
    import torch

    network = load_sevennet(model, torch.float32).model  # shares the trunk's cached build
    with warnings.catch_warnings():
        # torch.jit.script at torch_geometric's import; no tensor-product accelerator on CPU
        warnings.simplefilter("ignore")
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(network, file_type="model_instance", device=device)


def relax(atoms: Atoms, *, fmax: float = 1e-3, steps: int = 500, cell: bool = False) -> bool:
    """Relax ``atoms`` in place with its calculator (BFGS); with ``cell=True`` also the lattice
    (ASE ``FrechetCellFilter``, hydrostatic and shear).  Returns whether ``fmax`` (eV/Angstrom;
    for the cell, the filter's scaled stress) was reached within ``steps``."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if len(atoms) == 1 and not cell:
        return True  # one atom per cell: no internal degree of freedom
    optimizer = BFGS(FrechetCellFilter(atoms) if cell else atoms, logfile=None)
    return bool(optimizer.run(fmax=fmax, steps=steps))


@dataclasses.dataclass(frozen=True)
class FiniteStrainResult:
    """Elastic tensor of one crystal from finite strains.

    Attributes:
        voigt: ``(6, 6)`` stiffness in GPa (symmetrised), pymatgen's ``ElasticTensor.voigt``
            convention.
        structure: the relaxed (zero-strain) structure.
        residual_stress: ``(6,)`` Voigt stress of the relaxed, unstrained cell in GPa.
        strains: the strain magnitudes applied to each component.
        stresses: ``(6, len(strains), 6)`` Voigt stresses in GPa, ``[J, k, I]`` = stress ``I``
            under strain ``strains[k]`` of component ``J``.
        fit_rms: root-mean-square residual of the linear fits in GPa.
        asymmetry: ``max |C - C^T| / 2`` of the fitted matrix before symmetrisation, GPa.
        converged: whether every relaxation reached ``fmax``.
    """

    voigt: np.ndarray
    structure: Structure
    residual_stress: np.ndarray
    strains: tuple[float, ...]
    stresses: np.ndarray
    fit_rms: float
    asymmetry: float
    converged: bool

    @property
    def tensor(self) -> np.ndarray:
        """The full ``(3, 3, 3, 3)`` stiffness in GPa."""
        import irreptensor

        return np.asarray(irreptensor.from_voigt(self.voigt, "elastic"))

    def to_pymatgen(self) -> Any:
        """pymatgen ``ElasticTensor`` (GPa), e.g. for ``.k_vrh`` and ``.g_vrh``."""
        from pymatgen.analysis.elasticity import ElasticTensor

        return ElasticTensor.from_voigt(self.voigt)


def _fit(strains: Sequence[float], stresses: np.ndarray, stress0: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares slopes: ``C[:, J]`` from stress(delta) = a + C[:, J] delta over the strains of
    component J plus the unstrained point.  Returns (C (6, 6) unsymmetrised, rms residual)."""
    deltas = np.concatenate([[0.0], np.asarray(strains, dtype=float)])
    design = np.stack([np.ones_like(deltas), deltas], axis=1)
    C = np.zeros((6, 6))
    residuals = []
    for J in range(6):
        y = np.concatenate([stress0[None, :], stresses[J]], axis=0)  # (1 + n, 6)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        C[:, J] = coef[1]
        residuals.append(y - design @ coef)
    return C, float(np.sqrt(np.mean(np.square(residuals))))


def finite_strain_elastic(
    structure: Structure,
    calculator: Any = None,
    *,
    strains: Sequence[float] = DEFAULT_STRAINS,
    relax_cell: bool = True,
    relax_ions: bool = True,
    fmax: float = 1e-3,
    steps: int = 500,
) -> FiniteStrainResult:
    """Relaxed-ion elastic tensor of ``structure`` by finite strains with an ASE calculator.

    Args:
        structure: pymatgen structure (ordered).
        calculator: ASE calculator giving energy, forces and stress; default
            :func:`sevennet_calculator` (SevenNet-0 on CPU).
        strains: magnitudes applied to each Voigt component (at least one non-zero).
        relax_cell: relax lattice and ions before straining (else the input cell is the
            reference and its residual stress enters the fit's intercept only).
        relax_ions: relax the ions in each strained cell (relaxed-ion tensor; ``False`` gives
            the clamped-ion tensor).
        fmax: force tolerance of every relaxation, eV/Angstrom.
        steps: maximum optimizer steps per relaxation.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    strains = tuple(float(d) for d in strains)
    if not strains or not any(strains):
        raise ValueError("finite_strain_elastic: need at least one non-zero strain")
    if calculator is None:
        calculator = sevennet_calculator()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    converged = relax(atoms, fmax=fmax, steps=steps, cell=True) if relax_cell else True
    if not relax_cell and relax_ions:
        converged = relax(atoms, fmax=fmax, steps=steps)
    stress0 = atoms.get_stress(voigt=True) * EV_PER_A3_IN_GPA
    reference = atoms.copy()
    stresses = np.zeros((6, len(strains), 6))
    for J in range(6):
        for k, delta in enumerate(strains):
            strained = reference.copy()
            strained.calc = calculator
            cell = np.asarray(reference.cell) @ (np.eye(3) + voigt_strain(J, delta))
            strained.set_cell(cell, scale_atoms=True)
            if relax_ions:
                converged &= relax(strained, fmax=fmax, steps=steps)
            stresses[J, k] = strained.get_stress(voigt=True) * EV_PER_A3_IN_GPA
    C, rms = _fit(strains, stresses, stress0)
    return FiniteStrainResult(
        voigt=(C + C.T) / 2,
        structure=AseAtomsAdaptor.get_structure(reference),
        residual_stress=stress0,
        strains=strains,
        stresses=stresses,
        fit_rms=rms,
        asymmetry=float(np.abs(C - C.T).max() / 2),
        converged=bool(converged),
    )


def finite_strain_elastic_many(
    structures: Sequence[Structure],
    calculator: Any = None,
    *,
    progress: bool = True,
    **kwargs: Any,
) -> list[FiniteStrainResult]:
    """:func:`finite_strain_elastic` of each structure (one calculator, tqdm progress bar);
    ``kwargs`` are passed on."""
    from tqdm.auto import tqdm

    if calculator is None:
        calculator = sevennet_calculator()
    return [
        finite_strain_elastic(s, calculator, **kwargs)
        for s in tqdm(structures, desc="finite-strain elastic", unit="structure", disable=not progress)
    ]
