"""Cartesian -> irreps bases: stored exact tables, their float64 rounding, and the irreps layout.

The stored tables (``_tables/``) are written by ``python -m irreptensor.exact`` from the exact sympy
derivation; the tests re-derive them and compare symbol by symbol. Formulas without a stored table are
derived exactly on first use (sympy) and cached for the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .kinds import TensorKind, get_kind

_TABLES = Path(__file__).parent / "_tables"


@lru_cache(maxsize=None)
def _stored(which: str) -> dict:
    return json.loads((_TABLES / f"bases_{which}.json").read_text())


def _flip_parity(irreps: str) -> str:
    return irreps.translate(str.maketrans("eo", "oe"))


@lru_cache(maxsize=None)
def _float_basis(formula: str, parity: int) -> tuple[str, np.ndarray]:
    from .formula import parse_formula

    natural = (-1) ** parse_formula(formula).rank
    table = _stored("float").get(formula)
    if table is not None:
        irreps, Q = table["irreps"], np.array(table["matrix"], dtype=np.float64)
        if parity != natural:
            irreps = _flip_parity(irreps)
    else:
        from .exact import derive_basis, to_float

        b = derive_basis(formula, parity=parity)
        irreps = b.irreps_str()
        Q = np.vectorize(to_float, otypes=[np.float64])(b.matrix)
    Q.setflags(write=False)
    return irreps, Q


def float_basis(kind: str | TensorKind, *, parity: int | None = None) -> np.ndarray:
    """The basis as a read-only float64 array of shape ``(dim, 3**rank)``; rows orthonormal."""
    k = get_kind(kind, parity=parity)
    return _float_basis(*k.key)[1]


def basis(kind: str | TensorKind, *, exact: bool = False, parity: int | None = None):
    """Change of basis from Cartesian components to irreps coordinates.

    ``x = basis(kind) @ T.reshape(-1)`` gives the irreps coordinates of a Cartesian tensor ``T``
    (C-order flattening, index order as written in the formula); the rows are orthonormal and span
    exactly the tensors with the kind's index symmetry.

    Args:
        kind: a kind name or formula (see :func:`irreptensor.get_kind`).
        exact: return a ``sympy.Matrix`` of exact algebraic numbers (each ``±sqrt(rational)``) instead of
            floats.
        parity: parity for a formula kind (default polar, ``(-1)**rank``).

    Returns:
        float64 numpy array or sympy Matrix, shape ``(dim, 3**rank)`` (e.g. 21 x 81 for ``"elastic"``).
    """
    k = get_kind(kind, parity=parity)
    if not exact:
        return np.array(_float_basis(*k.key)[1])
    import sympy

    table = _stored("exact").get(k.formula)
    if table is not None:
        return sympy.Matrix([[sympy.sympify(e) for e in row] for row in table["matrix"]])
    from .exact import derive_basis

    return derive_basis(k.formula, parity=k.parity).as_sympy()


def irreps(kind: str | TensorKind, *, parity: int | None = None) -> str:
    """The irreps layout in e3nn's notation, e.g. ``irreps("elastic") == "2x0e+2x2e+1x4e"``."""
    k = get_kind(kind, parity=parity)
    return _float_basis(*k.key)[0]


@dataclass(frozen=True)
class IrrepBlock:
    """One irrep copy inside a kind's coordinates: ``x[..., block.slice]``.

    Attributes:
        name: ``"0e[0]"``, ``"0e[1]"``, ``"2e[0]"``, ... (the copy index in brackets only when repeated).
        l: degree; ``dim == 2*l + 1``.
        parity: +1 (``e``) or -1 (``o``).
        start, stop: the slice of the coordinates.
    """

    name: str
    l: int
    parity: int
    start: int
    stop: int

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def dim(self) -> int:
        return self.stop - self.start


def parse_irreps(irreps_str: str) -> list[tuple[int, int, int]]:
    """``"2x0e+1x4e"`` -> ``[(2, 0, 1), (1, 4, 1)]`` as (multiplicity, l, parity)."""
    out = []
    for term in irreps_str.split("+"):
        mul, ir = term.split("x") if "x" in term else ("1", term)
        out.append((int(mul), int(ir[:-1]), 1 if ir[-1] == "e" else -1))
    return out


@lru_cache(maxsize=None)
def irreps_blocks(irreps_str: str) -> tuple[IrrepBlock, ...]:
    """The irrep copies of an e3nn irreps string in coordinate order, e.g. ``irreps_blocks("2x0e+1x4e")``."""
    blocks = []
    i = 0
    for mul, l, p in parse_irreps(irreps_str):
        for u in range(mul):
            label = f"{l}{'e' if p == 1 else 'o'}" + (f"[{u}]" if mul > 1 else "")
            blocks.append(IrrepBlock(label, l, p, i, i + 2 * l + 1))
            i += 2 * l + 1
    return tuple(blocks)


def blocks(kind: str | TensorKind, *, parity: int | None = None) -> tuple[IrrepBlock, ...]:
    """The irrep copies of a kind in coordinate order, e.g. 5 blocks ``0e[0], 0e[1], 2e[0], 2e[1], 4e`` for elastic."""
    return irreps_blocks(irreps(kind, parity=parity))


def dim(kind: str | TensorKind, *, parity: int | None = None) -> int:
    """Number of independent components (irreps coordinates) of a kind: 6, 18, 21 for the crystal tensors."""
    return _float_basis(*get_kind(kind, parity=parity).key)[1].shape[0]
