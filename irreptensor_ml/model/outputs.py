"""Output maps: a head's normalized latent irreps -> the physical tensor, inside the model.

Every head of a :class:`~irreptensor_ml.model.predictor.TensorPredictor` ends in an
:class:`OutputMap`, which holds the training normalization as buffers and applies the output
transform, so the model's ``forward`` returns physical irreps (``irreptensor.irreps(kind)``
layout: elastic GPa, piezoelectric C/m^2, dielectric dimensionless).

Transforms (:data:`TRANSFORMS`):

``linear``   x = y * scale + shift (any kind).
``exp``      a positive-definite output by construction: the latent ``L = y * scale + shift`` is
             the irreps vector of a symmetric matrix ``M(L)`` and

                 dielectric:  eps = I + expm(M(L))        (eigenvalues > 1)
                 elastic:     C   = expm(M(L))            (M in Mandel form: positive definite,
                                                           i.e. Born-stable)

             ``M`` is a fixed linear map (the orthonormal irreps basis, and for the elastic tensor
             the orthogonal Mandel embedding), so a rotation ``R`` acts on ``M`` by an orthogonal
             similarity ``Q M Q^T`` and ``expm(Q M Q^T) = Q expm(M) Q^T``: the map is equivariant
             for proper and improper rotations.  ``torch.linalg.matrix_exp`` is differentiable
             everywhere, also at degenerate eigenvalues (isotropic crystals).  Training targets
             are mapped back with the matrix logarithm (eigendecomposition, float64, no gradient).

Parts.  With ``parts`` (the dielectric tensor's ``("electronic", "ionic")``) the latent holds one
block per part and the map returns their sum:

    linear:  eps_el = L_el,              eps_ion = L_ion
    exp:     eps_el = I + expm(M(L_el)),  eps_ion = expm(M(L_ion))   (eigenvalues > 1 and > 0)

so the total ``eps_el + eps_ion`` keeps every eigenvalue above 1 and each part is physical too.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["EIGENVALUE_FLOOR", "TRANSFORMS", "OutputMap", "matrix_form"]

logger = logging.getLogger(__name__)

#: transform name -> kinds it applies to (``None``: every kind).
TRANSFORMS: dict[str, tuple[str, ...] | None] = {
    "linear": None,
    "exp": ("dielectric", "elastic"),
}

#: identity added after ``expm`` (eps = I + expm(L) keeps every eigenvalue above 1).
_OFFSET = {"dielectric": 1.0, "elastic": 0.0}

#: identity added after ``expm`` per part (the electronic part is >= 1, the ionic one >= 0).
_PART_OFFSET = {("dielectric", "electronic"): 1.0, ("dielectric", "ionic"): 0.0}

#: eigenvalue floor of the matrix logarithm of a target (after the offset, in the property's
#: units).  A few DFT tensors are not positive definite (hypothetical, mechanically unstable ABO3
#: P4mm cells have negative Mandel eigenvalues): their latent targets use the nearest matrix
#: with eigenvalues >= the floor, and :meth:`OutputMap.fit` logs how many there are.
EIGENVALUE_FLOOR = {"dielectric": 1e-3, "elastic": 1.0}


def matrix_form(kind: str) -> np.ndarray:
    """``A`` (m*m, dim) float64: ``vec(M) = A @ x`` maps irreps coordinates ``x`` of ``kind`` to the
    symmetric matrix ``M`` (m = 3 for the dielectric tensor, 6 = Mandel form for the elastic one).

    ``A`` has orthonormal columns (the irreps basis is orthonormal and the Mandel map an isometry),
    so ``x = A.T @ vec(M)`` inverts it on symmetric matrices.
    """
    import irreptensor as it

    dim = int(it.dim(kind))
    eye = np.eye(dim)
    cart = np.asarray(it.compose(eye, kind), dtype=np.float64)  # (dim, 3, ..., 3)
    if kind == "dielectric":
        mats = cart.reshape(dim, 3, 3)
    elif kind == "elastic":
        mats = np.asarray(it.to_mandel(cart, "elastic"), dtype=np.float64)  # (dim, 6, 6)
    else:
        raise ValueError(f"matrix_form: no symmetric-matrix form for kind {kind!r} (dielectric, elastic)")
    m = mats.shape[-1]
    return mats.reshape(dim, m * m).T.copy()


class OutputMap(nn.Module):
    """Normalized latent ``(B, dim)`` -> physical irreps ``(B, dim)`` of one property.

    Args:
        kind: ``"dielectric"``, ``"piezoelectric"`` or ``"elastic"`` (or any irreps string for a
            ``linear`` map, e.g. a head with a custom layout).
        dim: irreps dimension of the output.
        transform: a key of :data:`TRANSFORMS`.
        parts: names of additive parts (module doc); the latent then has ``dim * len(parts)``
            coordinates, one block per part in this order.

    Buffers (in the ``state_dict`` of the model, hence of every checkpoint and ``model.pt``):
    ``shift``/``scale`` (latent_dim,) of the latent normalization (:class:`IrrepNormalizer`
    layout) and ``ref_scale`` (scalar): RMS per-component scale of the *physical* training
    targets, the unit of the Frobenius loss.  :meth:`fit` sets them from training targets.
    """

    def __init__(self, kind: str, dim: int, transform: str = "linear", parts: tuple[str, ...] = ()) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown output transform {transform!r}; expected one of {sorted(TRANSFORMS)}")
        allowed = TRANSFORMS[transform]
        if allowed is not None and kind not in allowed:
            raise ValueError(
                f"output transform {transform!r} applies to {', '.join(allowed)}, not to {kind!r}"
            )
        self.kind, self.dim, self.transform = str(kind), int(dim), transform
        self.parts = tuple(str(p) for p in parts)
        unknown = [p for p in self.parts if (self.kind, p) not in _PART_OFFSET]
        if unknown:
            known = sorted({p for k, p in _PART_OFFSET if k == self.kind})
            raise ValueError(f"OutputMap: {self.kind!r} has no part(s) {unknown}; known: {known}")
        self.latent_dim = self.dim * max(1, len(self.parts))
        self.register_buffer("shift", torch.zeros(self.latent_dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(self.latent_dim, dtype=torch.float64))
        self.register_buffer("ref_scale", torch.ones((), dtype=torch.float64))
        if transform == "exp":
            A = torch.as_tensor(matrix_form(kind))
            if A.shape[1] != self.dim:
                raise ValueError(f"OutputMap: {kind} has dim {A.shape[1]}, got dim={dim}")
            self.m = int(round(A.shape[0] ** 0.5))
            self.register_buffer("A", A, persistent=False)
            self.offset = _OFFSET[kind]

    def _apply(self, fn: Any, recurse: bool = True) -> "OutputMap":
        # Casting the model (``.float()``, ``.to(dtype)``) moves these buffers but keeps them
        # float64: they carry physical scales over orders of magnitude (forward casts them).
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    # ------------------------------------------------------------------ fitting
    def fit(self, x_train: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> "OutputMap":
        """Set the buffers from physical training targets ``(n, dim)`` (and, for a map with parts,
        the parts' targets ``{part: (n, dim)}`` of the same rows); returns ``self``.

        Targets below the eigenvalue floor (``exp``) are floored (see :data:`EIGENVALUE_FLOOR`)."""
        from irreptensor_ml.data.normalization import IrrepNormalizer

        x = torch.as_tensor(x_train, dtype=torch.float64)
        irreps = self._irreps()
        if self.transform == "exp" and not self.parts:
            n_clipped = len(self.not_positive_definite(x))
            if n_clipped:
                logger.warning("output transform 'exp' of %s: %d of %d training targets are below the eigenvalue "
                               "floor %g; their latent targets use the floored matrix", self.kind, n_clipped,
                               len(x), EIGENVALUE_FLOOR[self.kind])
        latent = self.to_latent(x, parts)
        norm = IrrepNormalizer().fit(latent, "+".join([irreps] * max(1, len(self.parts))))
        with torch.no_grad():
            self.shift.copy_(norm.shift)
            self.scale.copy_(norm.scale)
            self.ref_scale.copy_(IrrepNormalizer().fit(x, irreps).scale.pow(2).mean().sqrt())
        return self

    def load_normalizer(self, state: dict[str, Any]) -> "OutputMap":
        """Set shift/scale (and ``ref_scale``) from an :class:`IrrepNormalizer` state of a linear map
        (the model files of format 1 kept the normalizer beside the model)."""
        if self.transform != "linear":
            raise ValueError("load_normalizer: only a linear map takes a stored physical normalizer")
        shift = torch.as_tensor(state["shift"], dtype=torch.float64)
        scale = torch.as_tensor(state["scale"], dtype=torch.float64)
        if shift.shape != (self.dim,) or scale.shape != (self.dim,):
            raise ValueError(f"normalizer of dim {tuple(shift.shape)} does not fit output dim {self.dim}")
        with torch.no_grad():
            self.shift.copy_(shift)
            self.scale.copy_(scale)
            self.ref_scale.copy_(scale.pow(2).mean().sqrt())
        return self

    def _irreps(self) -> str:
        import irreptensor as it

        try:
            return str(it.irreps(self.kind))
        except Exception:  # a custom irreps layout was given as the kind
            return self.kind

    def normalizer(self) -> Any:
        """The latent :class:`IrrepNormalizer` (a copy of the buffers, on CPU)."""
        from irreptensor_ml.data.normalization import IrrepNormalizer

        irreps = "+".join([self._irreps()] * max(1, len(self.parts)))
        return IrrepNormalizer.from_state_dict(
            {"irreps": irreps, "shift": self.shift.detach().cpu(), "scale": self.scale.detach().cpu()}
        )

    # ------------------------------------------------------------------ maps
    def _matrices(self, x: torch.Tensor, offset: float | None = None) -> torch.Tensor:
        """Symmetric matrices ``(n, m, m)`` float64 of physical irreps ``x``, minus the offset."""
        A = self.A.to(device=x.device, dtype=torch.float64)
        M = (x.to(torch.float64) @ A.T).reshape(-1, self.m, self.m)
        eye = torch.eye(self.m, dtype=torch.float64, device=x.device)
        return 0.5 * (M + M.transpose(-1, -2)) - (self.offset if offset is None else offset) * eye

    @torch.no_grad()
    def not_positive_definite(self, x: torch.Tensor) -> list[int]:
        """Rows of physical irreps ``x`` whose matrix (minus the offset) has an eigenvalue below the
        floor (``exp`` only; always ``[]`` for ``linear``)."""
        if self.transform == "linear":
            return []
        w = torch.linalg.eigvalsh(self._matrices(torch.as_tensor(x)))
        return (w.min(dim=-1).values < EIGENVALUE_FLOOR[self.kind]).nonzero().flatten().tolist()

    @torch.no_grad()
    def _log(self, x: torch.Tensor, offset: float) -> torch.Tensor:
        """Latent of one block: ``x`` itself (linear) or the floored matrix logarithm (exp)."""
        if self.transform == "linear":
            return x.clone()
        w, v = torch.linalg.eigh(self._matrices(x, offset))
        w = w.clamp(min=EIGENVALUE_FLOOR[self.kind])
        L = (v * torch.log(w)[..., None, :]) @ v.transpose(-1, -2)
        return L.reshape(-1, self.m * self.m) @ self.A.to(device=x.device, dtype=torch.float64)

    @torch.no_grad()
    def to_latent(self, x: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Physical irreps ``(n, dim)`` -> latent ``L`` (not normalized), float64, no gradient.

        For ``exp``: the matrix logarithm, eigenvalues floored at :data:`EIGENVALUE_FLOOR`.  A map
        with parts needs ``parts = {part: (n, dim)}`` and returns the blocks side by side."""
        x = torch.as_tensor(x).to(torch.float64)
        if not self.parts:
            return self._log(x, self.offset if self.transform == "exp" else 0.0)
        missing = [p for p in self.parts if parts is None or p not in parts]
        if missing:
            raise ValueError(f"OutputMap of {self.kind} with parts {self.parts}: missing targets of {missing}")
        blocks = [self._log(torch.as_tensor(parts[p]).to(device=x.device, dtype=torch.float64),
                            _PART_OFFSET[(self.kind, p)]) for p in self.parts]
        if any(b.shape != x.shape for b in blocks):
            raise ValueError(f"part targets must have the shape of the total {tuple(x.shape)}")
        return torch.cat(blocks, dim=-1)

    def normalize_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift.to(latent.dtype)) / self.scale.to(latent.dtype)

    def latent_target(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                      parts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Normalized latent of physical targets ``(n, dim)`` (what the head should output)."""
        y = self.normalize_latent(self.to_latent(x, parts))
        return y.to(dtype or x.dtype)

    def _block(self, L: torch.Tensor, offset: float) -> torch.Tensor:
        if self.transform == "linear":
            return L
        A = self.A.to(L.dtype)
        E = torch.linalg.matrix_exp((L @ A.T).reshape(-1, self.m, self.m))
        if offset:
            E = E + offset * torch.eye(self.m, dtype=L.dtype, device=L.device)
        return E.reshape(-1, self.m * self.m) @ A

    def forward_parts(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalized latent ``(B, latent_dim)`` -> ``{part: (B, dim)}`` physical irreps of each part
        (empty for a map without parts)."""
        L = y * self.scale.to(y.dtype) + self.shift.to(y.dtype)
        return {p: self._block(L[:, k * self.dim:(k + 1) * self.dim], _PART_OFFSET[(self.kind, p)])
                for k, p in enumerate(self.parts)}

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Normalized latent ``(B, latent_dim)`` -> physical irreps ``(B, dim)`` (same dtype); with
        parts, their sum."""
        if self.parts:
            return sum(self.forward_parts(y).values())
        L = y * self.scale.to(y.dtype) + self.shift.to(y.dtype)
        return self._block(L, self.offset if self.transform == "exp" else 0.0)

    def extra_repr(self) -> str:
        parts = f", parts={self.parts}" if self.parts else ""
        return f"kind={self.kind!r}, dim={self.dim}, transform={self.transform!r}{parts}"
