"""The docstring examples (``>>>``) of every module of the core package ``irreptensor`` run.

Here rather than ``--doctest-modules`` in the pytest configuration, so that they run whichever
test paths are given and the option does not reach the tests' own modules or ``irreptensor_ml``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import irreptensor

MODULES = ["irreptensor"] + sorted(m.name for m in pkgutil.walk_packages(irreptensor.__path__, "irreptensor."))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see stdout)"


def test_core_has_examples() -> None:
    """The examples exist (a run of zero examples would pass silently)."""
    finder = doctest.DocTestFinder()
    count = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert count >= 5
