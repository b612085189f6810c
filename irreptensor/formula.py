"""Index-symmetry formulas such as ``"ijkl=jikl=klij"`` or ``"ij=-ji"``.

A formula lists index permutations (optionally negated) under which the tensor is unchanged
(or changes sign). Its closure is a group of signed permutations; the tensors it allows are the
image of the group-average projector. The parsing and closure follow ``e3nn.math.germinate_formulas``
so that the same formula means the same space here and in e3nn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SignedPerm = tuple[int, tuple[int, ...]]


def _compose(p1: tuple[int, ...], p2: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(p1[p2[i]] for i in range(len(p1)))


def _inverse(p: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(p.index(i) for i in range(len(p)))


@dataclass(frozen=True)
class Formula:
    """A parsed index-symmetry formula.

    Attributes:
        text: the formula as given, e.g. ``"ijk=ikj"``.
        indices: the reference index letters, e.g. ``"ijk"``.
        group: the closed group of signed permutations ``(sign, perm)``: ``T = sign * T.transpose(perm)``.
    """

    text: str
    indices: str
    group: frozenset[SignedPerm]

    @property
    def rank(self) -> int:
        return len(self.indices)

    @property
    def is_trivial(self) -> bool:
        """True when the formula allows no nonzero tensor (e.g. ``"ij=-ij"``)."""
        return (-1, tuple(range(self.rank))) in self.group

    def projector(self) -> np.ndarray:
        """Group-average projector onto the allowed tensors, shape ``(3**rank, 3**rank)``, exact in float64.

        Entries are k/|G| with small integers k, so float64 holds them exactly when |G| is a power of two
        and to within rounding otherwise.
        """
        return _projector(self.text)


@lru_cache(maxsize=None)
def parse_formula(text: str) -> Formula:
    """Parse a formula like ``"ijkl=jikl=klij"`` and close it under composition and inversion.

    Raises:
        ValueError: when a term is not a permutation of the first one, or an index is repeated.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"an index-symmetry formula must be a non-empty string such as 'ij=ji', got {text!r}")
    terms = [t.strip() for t in text.replace(" ", "").split("=")]
    signed = [(-1 if t.startswith("-") else 1, t.lstrip("-")) for t in terms]
    s0, f0 = signed[0]
    if s0 != 1:
        raise ValueError(f"formula {text!r}: the first term must not carry a sign")
    if not f0.isalpha() or len(set(f0)) != len(f0):
        raise ValueError(f"formula {text!r}: the first term {f0!r} must be distinct index letters, e.g. 'ijk'")
    for _, f in signed:
        if sorted(f) != sorted(f0):
            raise ValueError(f"formula {text!r}: {f!r} is not a permutation of {f0!r}")
    gens = {(s, tuple(f.index(i) for i in f0)) for s, f in signed}
    group = set(gens)
    while True:
        n = len(group)
        group |= {(s, _inverse(p)) for s, p in group}
        group |= {(s1 * s2, _compose(p1, p2)) for s1, p1 in group for s2, p2 in group}
        if len(group) == n:
            break
    return Formula(text=text, indices=f0, group=frozenset(group))


@lru_cache(maxsize=None)
def _projector(text: str) -> np.ndarray:
    f = parse_formula(text)
    r = f.rank
    n = 3**r
    P = np.zeros((n, n))
    idx = np.arange(n).reshape((3,) * r)
    for s, p in f.group:
        # T'[x] = s * T[x permuted by p]  (the e3nn convention: T[x] related to T[x[p]])
        permuted = np.transpose(idx, _inverse(p)).reshape(-1)
        P[np.arange(n), permuted] += s
    P /= len(f.group)
    P.setflags(write=False)
    return P


_SYMMETRIC = {2: "ij=ji", 3: "ijk=jik=ikj", 4: "ijkl=jikl=ikjl=ijlk"}


def symmetric_formula(rank: int) -> str:
    """The formula of the totally symmetric tensors of rank ``rank >= 2`` (adjacent transpositions), e.g.
    ``"ijk=jik=ikj"``; its top irrep ``l = rank`` is the harmonic basis ``Y_l`` (the Wigner D recursion and
    tables use it)."""
    if rank in _SYMMETRIC:
        return _SYMMETRIC[rank]
    letters = "ijklmnpqrs"[:rank]
    swaps = [letters[:i] + letters[i + 1] + letters[i] + letters[i + 2:] for i in range(rank - 1)]
    return "=".join([letters, *swaps])
