"""The documentation pages use the current calling convention: a DeprecationWarning of irreptensor is an error.
"""

import warnings

import pytest


@pytest.fixture(autouse=True)
def _irreptensor_deprecations_are_errors():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"irreptensor\.", category=DeprecationWarning)
        yield
