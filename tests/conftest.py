"""Shared test options: ``--runslow`` runs the tests marked ``@pytest.mark.slow``.

Also puts ``tests/`` on ``sys.path`` (whatever pytest's import mode) so that test files can share
``from strategies import ...`` (the hypothesis strategies of ``tests/strategies.py``).
"""

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
