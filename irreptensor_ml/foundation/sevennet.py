"""Offline loading of the SevenNet pretrained interatomic potentials shipped in the ``sevenn`` wheel.

SevenNet-0 (Park et al., J. Chem. Theory Comput. 20, 4857 (2024); MIT licence) is a NequIP network
built on e3nn and trained on the MPtrj energies, forces and stresses.  Its checkpoint
(``sevenn/pretrained_potentials/SevenNet_0__11Jul2024``) is part of the wheel, so loading it needs
no network.  What the trunk relies on, read from the checkpoint's config (sevenn 0.13.0):

- cutoff 5.0 Angstrom; Bessel radial basis (8 functions, trainable frequencies) times an XPLOR
  switching function from 4.5 to 5.0 Angstrom;
- 89 elements (H..Pu without Po, At, Rn, Fr, Ra), one-hot over sevenn's own type indices
  (``config["_type_map"]``: atomic number -> index; the elements sorted by symbol, not by Z);
- 5 interaction blocks; blocks 0-3 output ``128x0e+64x1e+32x2e``, block 4 only ``128x0e``
  (the input of the energy read-out);
- ``is_parity = False``: the group is SO(3), not O(3).  The edge harmonics are labelled
  ``0e+1e+2e`` although ``Y^1`` is odd under inversion, so every node channel mixes
  components of both parities; only proper rotations act on the features by the Wigner
  matrices of their labels (see :class:`~irreptensor_ml.foundation.trunk.FoundationTrunk`).

``sevenn`` is an optional dependency: this module imports it only inside functions, and
:func:`require_sevenn` turns its absence into an ``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import warnings
from types import ModuleType
from typing import Any

import torch
from e3nn import o3

__all__ = [
    "INSTALL_HINT",
    "SHIPPED_MODELS",
    "SevenNetModel",
    "load_sevennet",
    "require_sevenn",
    "sevenn_available",
]

#: The command that installs the optional dependencies of :mod:`irreptensor_ml.foundation`.
INSTALL_HINT = 'pip install "irreptensor[foundation]"'

_MIN_SEVENN = (0, 10)

#: Pretrained models whose checkpoints ship inside the sevenn wheel: name -> constant of
#: ``sevenn._const`` holding the checkpoint path.  Other sevenn names would be downloaded.
SHIPPED_MODELS: dict[str, str] = {
    "7net-0": "SEVENNET_0_11Jul2024",
    "7net-0_22may2024": "SEVENNET_0_22May2024",
    "7net-l3i5": "SEVENNET_l3i5",
}


def sevenn_available() -> bool:
    """Whether ``sevenn`` can be imported (without importing it twice)."""
    try:
        require_sevenn()
    except ImportError:
        return False
    return True


def require_sevenn() -> ModuleType:
    """Import and return ``sevenn``; ``ImportError`` naming :data:`INSTALL_HINT` if it is missing
    (or older than 0.10)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script at import
            import sevenn
            import sevenn._const  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the foundation trunk needs the optional dependency 'sevenn' (SevenNet, with ase and "
            f"torch_geometric); install it with: {INSTALL_HINT}"
        ) from exc
    version = tuple(int(p) for p in sevenn.__version__.split(".")[:2] if p.isdigit())
    if version < _MIN_SEVENN:
        raise ImportError(
            f"sevenn {sevenn.__version__} is too old (need >= 0.10); upgrade with: {INSTALL_HINT}"
        )
    return sevenn


@dataclasses.dataclass(frozen=True)
class SevenNetModel:
    """A pretrained SevenNet network and the facts the trunk needs.

    Attributes:
        name: the name or checkpoint path it was loaded from.
        model: sevenn's ``AtomGraphSequential`` (embedding, interaction blocks, energy read-out,
            force/stress output); a private copy, free to be trained.
        config: sevenn's model config (a dict; ``_type_map``, ``cutoff``, ...).
        cutoff: neighbour cutoff in Angstrom.
        type_map: atomic number -> sevenn type index (row of the one-hot embedding).
        block_irreps: node irreps after each interaction block, as sevenn labels them.
        is_parity: whether the model is O(3)- (True) or only SO(3)-equivariant (False).
    """

    name: str
    model: torch.nn.Module
    config: dict[str, Any]
    cutoff: float
    type_map: dict[int, int]
    block_irreps: tuple[o3.Irreps, ...]
    is_parity: bool

    @property
    def num_blocks(self) -> int:
        """Number of interaction blocks."""
        return len(self.block_irreps)


def _checkpoint_path(name: str) -> str:
    """Local checkpoint file of ``name``: an existing file path or a :data:`SHIPPED_MODELS` name."""
    if os.path.isfile(name):
        return name
    import sevenn._const as const

    key = SHIPPED_MODELS.get(name.lower())
    path = getattr(const, key, None) if key else None
    if path is None or not os.path.isfile(path):
        raise ValueError(
            f"SevenNet model {name!r} is not shipped with the installed sevenn (offline names: "
            f"{sorted(SHIPPED_MODELS)}); pass the path of a downloaded checkpoint instead"
        )
    return path


@functools.lru_cache(maxsize=4)
def _prototype(path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the network of a checkpoint once per (path, dtype); callers get deep copies.

    sevenn loads checkpoints into a float32-built network (its compatibility patches compare
    float32 Clebsch-Gordan coefficients).  e3nn computes those coefficients in the default dtype
    at construction, so for another dtype the network is rebuilt with that default dtype and
    receives the float32 network's parameters and buffers except the coefficients (e3nn's
    generated ``_compiled_main*`` modules): float64 models are then exactly equivariant.
    """
    from sevenn.checkpoint import SevenNetCheckpoint
    from sevenn.model_build import build_E3_equivariant_model

    previous = torch.get_default_dtype()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript annotations, missing TP accelerators
            torch.set_default_dtype(torch.float32)
            checkpoint = SevenNetCheckpoint(path)
            model = checkpoint.build_model()
            config = checkpoint.config
            if dtype != torch.float32:
                torch.set_default_dtype(dtype)
                rebuilt = build_E3_equivariant_model(copy.deepcopy(config))
                state = {k: v for k, v in model.state_dict().items() if "._compiled_main" not in k}
                missing, unexpected = rebuilt.load_state_dict(state, strict=False)
                if unexpected or any("._compiled_main" not in k for k in missing):
                    raise RuntimeError(
                        f"rebuilding {path} in {dtype}: missing {missing[:3]}, unexpected {unexpected[:3]}"
                    )
                model = rebuilt
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval(), config


def load_sevennet(name: str = "7net-0", dtype: torch.dtype = torch.float32) -> SevenNetModel:
    """Load a pretrained SevenNet potential offline.

    Args:
        name: a name of :data:`SHIPPED_MODELS` (default ``"7net-0"``, SevenNet-0 of 11 July 2024)
            or the path of a sevenn checkpoint (``.pth``).
        dtype: floating dtype of the parameters and e3nn buffers (float64 for ~1e-12
            equivariance tests).

    Raises ``ImportError`` without sevenn (naming :data:`INSTALL_HINT`) and ``ValueError`` for a
    name that would need a download or a multi-fidelity (multi-modal) checkpoint.
    """
    require_sevenn()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"load_sevennet: dtype must be a floating torch dtype, got {dtype!r}")
    prototype, config = _prototype(_checkpoint_path(str(name)), dtype)
    if config.get("use_modality", False):
        raise ValueError(
            f"SevenNet model {name!r} is multi-fidelity (use_modality); only single-fidelity "
            "models are supported"
        )
    if config.get("interaction_type", "nequip") != "nequip":
        raise ValueError(
            f"SevenNet model {name!r}: unsupported interaction type {config['interaction_type']!r}"
        )
    model = copy.deepcopy(prototype)
    num_blocks = int(config["num_convolution_layer"])
    block_irreps = tuple(
        o3.Irreps(model._modules[f"{t}_equivariant_gate"].gate.irreps_out) for t in range(num_blocks)
    )
    return SevenNetModel(
        name=str(name),
        model=model,
        config=copy.deepcopy(config),
        cutoff=float(config["cutoff"]),
        type_map={int(z): int(i) for z, i in config["_type_map"].items()},
        block_irreps=block_irreps,
        is_parity=bool(config["is_parity"]),
    )
