"""Import structure of irreptensor_ml: the foundation trunk builds on the data layer, not on the model
package, so ``model`` -> ``foundation`` (a lazy import in :func:`irreptensor_ml.model.build_trunk`)
is the only direction between the two."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "irreptensor_ml"


def _imported(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved)."""
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.add(mod)
    return out


def test_foundation_does_not_import_the_model_package():
    for path in sorted((PKG / "foundation").glob("*.py")):
        bad = {m for m in _imported(path) if m == "irreptensor_ml.model" or m.startswith("irreptensor_ml.model.")}
        assert not bad, f"{path.name} imports {sorted(bad)}: the model package imports foundation (cycle)"


def test_the_checker_sees_the_model_importing_foundation():
    assert "irreptensor_ml.foundation.trunk" in _imported(PKG / "model" / "predictor.py")
