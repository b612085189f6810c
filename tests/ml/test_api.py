"""The package's public API: lazy top-level exports, and ``predict``/``train``/``evaluate`` that
are at once callable functions and importable modules, whichever spelling is imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import irreptensor_ml

REPO = Path(__file__).resolve().parents[2]
EXPORTS = {"evaluate", "fit", "load_model", "predict", "train"}


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (imports made by this test process do not count)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_light() -> None:
    """``import irreptensor_ml`` (and ``dir``) loads no torch, lightning, e3nn or pymatgen."""
    out = _run("""
        import sys
        import irreptensor_ml
        dir(irreptensor_ml)
        heavy = {"torch", "lightning", "e3nn", "pymatgen"}
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("irreptensor_ml.")))
    """)
    assert out.strip() == "[]"


def test_all_and_dir() -> None:
    assert set(irreptensor_ml.__all__) == EXPORTS
    assert EXPORTS <= set(dir(irreptensor_ml))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        irreptensor_ml.nope  # noqa: B018


# Both spellings of each export in one process.  ``package`` first touches the package attribute
# (lazy export), ``module`` first imports the submodules; the checks after that are the same.
_SPELLINGS = """
    import sys
    import irreptensor_ml

    order = sys.argv[1]
    if order == "package":
        assert callable(irreptensor_ml.predict) and callable(irreptensor_ml.train)
        assert callable(irreptensor_ml.evaluate)
    from irreptensor_ml.predict import predict
    from irreptensor_ml.train import fit, load_model
    from irreptensor_ml.evaluate import evaluate_run
    import irreptensor_ml.predict
    import irreptensor_ml.train
    import irreptensor_ml.evaluate
    from irreptensor_ml import predict as P  # the module, as irreptensor_ml.cli uses it

    mods = {n: sys.modules["irreptensor_ml." + n] for n in ("predict", "train", "evaluate")}
    assert P is mods["predict"] and hasattr(P, "read_structure")
    assert predict is P.predict and evaluate_run is mods["evaluate"].evaluate_run
    assert fit is irreptensor_ml.fit is sys.modules["irreptensor_ml.train.fit"].fit
    assert load_model is irreptensor_ml.load_model is sys.modules["irreptensor_ml.train.checkpoint"].load_model
    for name, func in (("predict", "predict"), ("train", "fit"), ("evaluate", "evaluate_run")):
        module = getattr(irreptensor_ml, name)
        assert module is mods[name], name
        setattr(module, func, lambda *a, **k: (func, a, k))  # calling the module calls its function
        assert module(1, x=2) == (func, (1,), {"x": 2}), name
    print("ok")
"""


@pytest.mark.parametrize("order", ["package", "module"])
def test_function_and_module_spellings(order: str) -> None:
    code = f"import sys; sys.argv[1:] = [{order!r}]\n" + textwrap.dedent(_SPELLINGS)
    assert _run(code).strip() == "ok"


def test_exports_call_the_real_functions(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        irreptensor_ml.evaluate(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown split"):
        irreptensor_ml.evaluate(tmp_path, split="holdout")
    with pytest.raises(ValueError, match="does not exist"):  # ModelFileError
        irreptensor_ml.load_model(tmp_path / "missing")
