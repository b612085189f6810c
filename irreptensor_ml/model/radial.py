"""Radial (edge-length) embedding with a smooth cutoff.

An edge of length ``r`` (Angstrom) is embedded as ``num_basis`` Bessel functions
``sqrt(2/c) sin(n pi r / c) / r`` (``n = 1..num_basis``, ``c`` the cutoff; the basis
of DimeNet/NequIP, computed with :func:`e3nn.math.soft_one_hot_linspace`) times the
polynomial envelope ``u(r/c)`` of Klicpera et al. (DimeNet, eq. 8), which goes to
zero at ``r = c`` together with its first and second derivatives.  Multiplying by the
envelope makes every message, and therefore the prediction, a twice continuously
differentiable function of the atomic positions even when a neighbour crosses the
cutoff sphere.
"""

from __future__ import annotations

import torch
from e3nn.math import soft_one_hot_linspace
from torch import nn

__all__ = ["polynomial_envelope", "RadialBasis"]


def polynomial_envelope(x: torch.Tensor, p: int = 6) -> torch.Tensor:
    """Smooth cutoff envelope ``u(x)`` for reduced distances ``x = r / cutoff``.

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for
    ``0 <= x < 1`` and ``0`` for ``x >= 1``; ``u(0) = 1``, and since
    ``u'(x) = -p(p+1)(p+2)/2 x^(p-1) (1-x)^2``, ``u``, ``u'`` and ``u''`` vanish at ``x = 1``.
    Returns a tensor of the same shape as ``x``.
    """
    if p < 2:
        raise ValueError(f"polynomial_envelope: exponent p must be >= 2, got p={p}")
    u = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x.pow(p)
        + p * (p + 2.0) * x.pow(p + 1)
        - p * (p + 1.0) / 2.0 * x.pow(p + 2)
    )
    return u * (x < 1.0)


class RadialBasis(nn.Module):
    """Bessel radial basis with polynomial envelope.

    Args:
        cutoff: neighbour cutoff radius in Angstrom (the same value used to build the graph).
        num_basis: number of Bessel functions.
        envelope_exponent: ``p`` of :func:`polynomial_envelope`.

    ``forward(r)``: ``r`` edge lengths (E,) in Angstrom -> (E, num_basis), multiplied by
    ``sqrt(num_basis)`` so that the features have roughly unit second moment, which keeps the
    radial MLP that follows well conditioned.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, envelope_exponent: int = 6) -> None:
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"RadialBasis: cutoff must be > 0 Angstrom, got {cutoff}")
        if num_basis < 1:
            raise ValueError(f"RadialBasis: num_basis must be >= 1, got {num_basis}")
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        self.envelope_exponent = int(envelope_exponent)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        basis = soft_one_hot_linspace(
            r, 0.0, self.cutoff, self.num_basis, basis="bessel", cutoff=True
        )
        env = polynomial_envelope(r / self.cutoff, self.envelope_exponent)
        return basis * env[..., None] * self.num_basis**0.5

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}, p={self.envelope_exponent}"
