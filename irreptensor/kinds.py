"""The tensor kinds: one registry of data (rank, index symmetry, parity, Voigt weights, aliases).

A *kind* is either one of the named crystal-tensor kinds below or a general index-symmetry formula
such as ``"ijk=jik=kji"`` (polar by default; pass ``parity=`` for axial tensors).

Calling convention of the whole package (``docs/conventions.md``): the array(s) first, then ``kind``
(``decompose(T, kind)``, ``rotate(T, R, kind)``, ``wigner_D(R, kind)``), ``kind`` required, ``parity`` and
every other option keyword-only.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass

from .formula import parse_formula

# Voigt pairs in the order xx, yy, zz, yz, xz, xy.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class TensorKind:
    """What a tensor is: its index symmetry, parity and Voigt convention.

    Attributes:
        name: canonical name (``"elastic"``) or the formula itself for general kinds.
        formula: index-symmetry formula in e3nn's syntax, e.g. ``"ijkl=jikl=klij"``.
        parity: +1 (even under inversion) or -1; polar rank-r tensors have ``(-1)**r``.
        voigt_shape: trailing shape of the Voigt form, or ``None`` when the kind has none.
        voigt_weight: factor per shear (index 4, 5, 6) Voigt index that multiplies the Cartesian
            component in Voigt form: 1 (stiffness, stress-charge e), 2 (compliance, strain-charge d).
        unit: the unit of the shipped data for this kind (informational).
        description: one line for error messages and docs.
    """

    name: str
    formula: str
    parity: int
    voigt_shape: tuple[int, ...] | None
    voigt_weight: int
    unit: str
    description: str

    @property
    def rank(self) -> int:
        return parse_formula(self.formula).rank

    @property
    def cartesian_shape(self) -> tuple[int, ...]:
        return (3,) * self.rank

    @property
    def key(self) -> tuple[str, int]:
        """What determines the irreps basis: (formula, parity)."""
        return (self.formula, self.parity)


_NAMED = {
    "dielectric": TensorKind(
        "dielectric", "ij=ji", 1, (6,), 1, "1", "symmetric rank-2 tensor eps_ij = eps_ji (also any symmetric rank-2)"
    ),
    "piezoelectric": TensorKind(
        "piezoelectric", "ijk=ikj", -1, (3, 6), 1, "C/m^2", "piezoelectric stress-charge tensor e_ijk = e_ikj"
    ),
    "piezoelectric_d": TensorKind(
        "piezoelectric_d", "ijk=ikj", -1, (3, 6), 2, "pC/N", "piezoelectric strain-charge tensor d_ijk = d_ikj"
    ),
    "elastic": TensorKind(
        "elastic", "ijkl=jikl=klij", 1, (6, 6), 1, "GPa", "elastic stiffness C_ijkl = C_jikl = C_klij"
    ),
    "compliance": TensorKind(
        "compliance", "ijkl=jikl=klij", 1, (6, 6), 2, "1/GPa", "elastic compliance S_ijkl = S_jikl = S_klij"
    ),
}
_ALIASES = {"piezo": "piezoelectric", "piezo_d": "piezoelectric_d", "stiffness": "elastic"}

NAMED_KINDS = tuple(_NAMED)
# letters a formula may use; anything else (e.g. a misspelt kind name) is reported as unknown
_INDEX_LETTERS = "ijklmnpqrs"


class _Required:
    """The default of a ``kind`` argument that must be given (the placeholder of a deprecated default)."""

    def __repr__(self) -> str:
        return "<required>"


KIND_REQUIRED = _Required()
"""Default of ``kind`` in the functions that took ``kind="elastic"`` by default until 0.1: leaving it out
still means ``"elastic"`` for one release, with a :class:`DeprecationWarning`."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first frame outside this package.

    A deprecation warning should name the user's line, however many irreptensor frames (a public
    function, a decorator such as :func:`renamed_keyword`) stand between it and the warning.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def required_kind(kind, call: str):
    """``kind``, or ``"elastic"`` with a :class:`DeprecationWarning` when it was left out (``KIND_REQUIRED``).

    ``call`` is the new form of the call for the message, e.g. ``"rotate(T, R, kind)"``. The warning
    points at the first caller outside irreptensor (:func:`user_stacklevel`).
    """
    if kind is KIND_REQUIRED:
        name = call.split("(")[0]
        warnings.warn(
            f"irreptensor.{name}() without kind is deprecated and still means kind='elastic' for one release; "
            f"pass the kind: {call}, e.g. {call.replace('kind', repr('elastic'))}",
            DeprecationWarning,
            stacklevel=user_stacklevel(),
        )
        return "elastic"
    return kind


def kind_last(first, second, call: str):
    """``(array, kind)`` from arguments given in either order; the old order ``(kind, array)`` warns.

    For the functions whose order changed to the package convention (array first, then kind), such as
    ``wigner_D(R, kind)`` (formerly ``wigner_D(kind, R)``): when ``first`` is a kind (a ``str`` or a
    :class:`TensorKind`) the two are swapped and a :class:`DeprecationWarning` names the new order.
    """
    if isinstance(first, (str, TensorKind)) and not isinstance(second, (str, TensorKind)):
        name = call.split("(")[0]
        old = call[len(name) + 1:-1].split(", ")
        warnings.warn(
            f"irreptensor.{name}({old[1]}, {old[0]}) is deprecated (kind first); call {call}: the array first, "
            "then the kind, as everywhere in irreptensor. The old order works for one more release.",
            DeprecationWarning,
            stacklevel=user_stacklevel(),
        )
        return second, first
    return first, second


def renamed_keyword(old: str, new: str):
    """Decorator: the keyword ``old`` of a public function still works for one release as ``new``.

    For the flag renamed ``symmetrize`` -> ``symmetrize_indices`` (``symmetrize`` is the point-group
    function :func:`irreptensor.symmetrize`; the flag only projects onto the kind's index symmetry).
    Passing both raises TypeError; passing ``old`` alone warns (:class:`DeprecationWarning`).
    """

    def wrap(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{func.__name__}() got both {new}= and its deprecated spelling {old}=")
                warnings.warn(
                    f"irreptensor.{func.__name__}({old}=...) is deprecated (removed in the next release); "
                    f"pass {new}=... ({old} is the name of the point-group function irreptensor.{old})",
                    DeprecationWarning,
                    stacklevel=user_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return wrap


def get_kind(kind: str | TensorKind, *, parity: int | None = None) -> TensorKind:
    """Resolve a kind name, alias or index-symmetry formula to a :class:`TensorKind`.

    Args:
        kind: ``"dielectric"``, ``"piezoelectric"`` (``"piezo"``), ``"piezoelectric_d"``, ``"elastic"``
            (``"stiffness"``), ``"compliance"``, or a formula such as ``"ijk=jik=kji"``.
        parity: only for formulas: +1 or -1; default ``(-1)**rank`` (a polar tensor).

    Raises:
        ValueError: unknown kind (the message lists the valid ones), or a bad formula or parity.
    """
    if isinstance(kind, TensorKind):
        if parity is not None and parity != kind.parity:
            raise ValueError(f"parity={parity} contradicts kind {kind.name!r} (parity {kind.parity})")
        return kind
    if not isinstance(kind, str):
        raise ValueError(f"kind must be a string, got {type(kind).__name__}")
    name = _ALIASES.get(kind, kind)
    if name in _NAMED:
        k = _NAMED[name]
        if parity is not None and parity != k.parity:
            raise ValueError(
                f"kind {kind!r} has parity {k.parity:+d}; for another parity give its formula {k.formula!r} with parity="
            )
        return k
    letters = kind.replace("=", "").replace("-", "").replace(" ", "")
    if not letters or not set(letters) <= set(_INDEX_LETTERS):
        raise ValueError(_unknown(kind))
    try:
        f = parse_formula(kind)
    except ValueError as e:
        raise ValueError(f"{e}. {_unknown(kind)}") from None
    if f.is_trivial:
        raise ValueError(f"formula {kind!r} allows only the zero tensor")
    if parity is None:
        parity = (-1) ** f.rank
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity!r}")
    return TensorKind(kind, kind, parity, None, 1, "", f"tensor with index symmetry {kind}")


def _unknown(kind: str) -> str:
    names = ", ".join(repr(n) for n in (*_NAMED, *_ALIASES))
    return f"unknown tensor kind {kind!r}; valid kinds are {names}, or an index-symmetry formula such as 'ijk=jik=kji'"
