"""Per-irrep-block normalization of irrep-basis targets.

Each irrep *instance* of the target layout (e.g. elastic ``2x0e+2x2e+1x4e`` has five blocks:
0e, 0e, 2e, 2e, 4e of sizes 1, 1, 5, 5, 9) gets its own affine map fitted on the training
split only:

* ``0e`` blocks (rotation- and inversion-invariant scalars): shift by the training mean, then
  divide by the training RMS of the shifted values (= standard deviation);
* every other block: no shift (a shift would break equivariance), divide by the block RMS
  ``sqrt(mean over samples and the 2l+1 components of x^2)``.

Scaling a whole block by one number commutes with the Wigner-D matrices, so normalized targets
transform exactly like the raw ones. ``normalize``/``denormalize`` are differentiable torch
functions; the fitted state is plain tensors + a string (safe for ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from e3nn import o3

logger = logging.getLogger(__name__)

_MIN_SCALE = 1e-12


class IrrepNormalizer:
    """Per-irrep-block shift/scale fitted on training targets.

    Attributes (after :meth:`fit`):
        irreps: the irreps string, e.g. ``"2x0e+2x2e+1x4e"``.
        shift: ``(dim,)`` float64, non-zero only on 0e components.
        scale: ``(dim,)`` float64, constant within each block, > 0.
    """

    def __init__(self) -> None:
        self.irreps: str | None = None
        self.shift: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_state_dict`) has set the transform."""
        return self.irreps is not None

    @property
    def dim(self) -> int:
        """Dimension of the irrep vector."""
        self._require_fitted()
        return int(self.scale.shape[0])

    def fit(self, x_train: Any, irreps: str) -> "IrrepNormalizer":
        """Fit on training targets ``x_train`` of shape ``(n, dim)`` in the irrep basis.

        Raises ``ValueError`` if the shape does not match ``irreps``, if there are no rows, or if
        the values are not finite. A block whose training RMS is ~0 (e.g. identically zero) keeps
        scale 1 and a warning is logged.
        """
        parsed = o3.Irreps(irreps)
        x = torch.as_tensor(x_train).detach().to("cpu", torch.float64)
        if x.ndim != 2 or x.shape[1] != parsed.dim:
            raise ValueError(
                f"x_train must have shape (n, {parsed.dim}) for irreps {irreps!r}, "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("x_train has no rows: cannot fit a normalizer on an empty training set")
        if not torch.isfinite(x).all():
            raise ValueError("x_train contains NaN or inf")
        shift = torch.zeros(parsed.dim, dtype=torch.float64)
        scale = torch.ones(parsed.dim, dtype=torch.float64)
        start = 0
        for mul, ir in parsed:
            for _ in range(mul):
                sl = slice(start, start + ir.dim)
                block = x[:, sl]
                if ir.l == 0 and ir.p == 1:
                    shift[sl] = block.mean()
                dev = block - shift[sl]
                rms = float(dev.pow(2).mean().sqrt())
                if not math.isfinite(rms):  # squares overflow (|x| > ~1e154): the RMS of dev / max|dev|
                    peak = dev.abs().max()
                    rms = float(peak * (dev / peak).pow(2).mean().sqrt())
                if rms > _MIN_SCALE:
                    scale[sl] = rms
                else:
                    logger.warning("irrep block %s at %d has zero RMS; scale set to 1", ir, start)
                start += ir.dim
        self.irreps, self.shift, self.scale = str(parsed), shift, scale
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ValueError("IrrepNormalizer is not fitted; call fit() or from_state_dict() first")

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_fitted()
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"last dimension {x.shape[-1]} does not match irreps {self.irreps} (dim {self.dim})"
            )
        return self.shift.to(x.device, x.dtype), self.scale.to(x.device, x.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical irrep values ``(..., dim)`` -> normalized ``(x - shift) / scale``."""
        shift, scale = self._params(x)
        return (x - shift) / scale

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Normalized ``(..., dim)`` -> physical irrep values ``y * scale + shift``."""
        shift, scale = self._params(y)
        return y * scale + shift

    def state_dict(self) -> dict[str, Any]:
        """``{"irreps": str, "shift": Tensor(dim), "scale": Tensor(dim)}`` (copies)."""
        self._require_fitted()
        return {"irreps": self.irreps, "shift": self.shift.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "IrrepNormalizer":
        """Rebuild a fitted normalizer from :meth:`state_dict` output (validates shapes)."""
        missing = {"irreps", "shift", "scale"} - set(state)
        if missing:
            raise ValueError(f"normalizer state lacks key(s) {sorted(missing)}")
        dim = o3.Irreps(state["irreps"]).dim
        shift = torch.as_tensor(state["shift"], dtype=torch.float64).clone()
        scale = torch.as_tensor(state["scale"], dtype=torch.float64).clone()
        if shift.shape != (dim,) or scale.shape != (dim,):
            raise ValueError(
                f"normalizer state shapes {tuple(shift.shape)}, {tuple(scale.shape)} do not match "
                f"irreps {state['irreps']!r} (dim {dim})"
            )
        if not bool((scale > 0).all()):
            raise ValueError("normalizer state has non-positive scale entries")
        out = cls()
        out.irreps, out.shift, out.scale = str(o3.Irreps(state["irreps"])), shift, scale
        return out

    def __repr__(self) -> str:
        return f"IrrepNormalizer(irreps={self.irreps!r})" if self.fitted else "IrrepNormalizer()"
