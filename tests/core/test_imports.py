"""The import structure of the core package ``irreptensor``.

Rules checked here, for every module ``irreptensor/*.py`` (found on disk, so new modules are covered):

1. No import cycle between core modules, counting the imports made inside functions (a deferred import
   hides a cycle at load time but still ties the two modules together). With the import graph acyclic,
   the modules load in any order; :func:`test_each_module_imports_first_in_a_fresh_interpreter` also
   imports each one first, then all the others, in a fresh interpreter with the package's ``__init__``
   bypassed (which otherwise fixes the order), and checks that torch stays unloaded.
2. No core module imports an underscore name from another core module (``from .m import _x``, or
   ``m._x`` on an imported module): what modules share is public in the module that defines it (helpers
   used across the package live in :mod:`irreptensor.backend`). Underscore *modules* are internal by
   design and may be imported (their public names only): ``irreptensor._blas`` (batched BLAS products
   and the chunk runner); ``irreptensor/_tables/`` is data read from disk, not imported. Dunder names
   (``__version__``) are not private.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import irreptensor

PKG = "irreptensor"
ROOT = Path(irreptensor.__file__).parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
INTERNAL_MODULES = {"_blas"}
"""Underscore modules of the package that other core modules may import from (public names only)."""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(stem: str):
    """``(lineno, module, names)`` for each import of a core module by ``irreptensor/<stem>.py``, at any depth.

    ``module`` is the core module's stem (``"__init__"`` for the package itself); ``names`` the names taken
    from it (``None`` for ``import irreptensor.x``). ``from . import x`` counts as an import of module ``x``.
    """
    path = ROOT / ("__init__.py" if stem == "__init__" else f"{stem}.py")
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level != 1:
                    raise AssertionError(f"{path.name}:{node.lineno}: relative import above the package")
                parts = node.module.split(".") if node.module else []
            elif node.module == PKG or (node.module or "").startswith(PKG + "."):
                parts = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            if not parts:  # from . import x, y: the modules x, y
                out += [(node.lineno, n, None) for n in names if n in MODULES]
                out += [(node.lineno, "__init__", [n]) for n in names if n not in MODULES]
            else:
                out.append((node.lineno, parts[0], names))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PKG + "."):
                    out.append((node.lineno, a.name.split(".")[1], None))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {dep for _, dep, _ in _imports(m) if dep != m and dep in MODULES} for m in MODULES}


def test_the_module_list_is_what_the_package_holds():
    assert {"backend", "basis", "decomposition", "voigt", "wigner", "wigner_tables", "_blas"} <= set(MODULES)


def test_no_import_cycle_between_core_modules():
    graph = _graph()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            cycle = path[path.index(m):] + [m]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        done.add(m)

    for m in MODULES:
        visit(m, [])


def test_no_core_module_imports_a_private_name_of_another():
    bad = []
    for stem in ["__init__", *MODULES]:
        bound = {}  # local name -> core module, for the attribute check below
        for lineno, mod, names in _imports(stem):
            where = f"irreptensor/{stem}.py:{lineno}"
            if mod == stem:
                continue
            if _private(mod) and mod not in INTERNAL_MODULES:
                bad.append(f"{where}: imports the private module {mod}")
            if names is None:
                bound[mod] = mod
                continue
            bad += [f"{where}: from {mod} import {n}" for n in names if _private(n)]
        tree = ast.parse((ROOT / ("__init__.py" if stem == "__init__" else f"{stem}.py")).read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and _private(node.attr)):
                bad.append(f"irreptensor/{stem}.py:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "private names imported across core modules:\n" + "\n".join(bad)


def test_the_checks_see_private_and_relative_imports(tmp_path, monkeypatch):
    """The AST walk resolves both import spellings, at any depth (guards the two tests above)."""
    fake = tmp_path / "fake.py"
    fake.write_text("from .basis import _x\n"
                    "def f():\n    from irreptensor.voigt import as_cartesian\n    from . import wigner\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    got = {(m, tuple(n) if n else None) for _, m, n in _imports("fake")}
    assert got == {("basis", ("_x",)), ("voigt", ("as_cartesian",)), ("wigner", None)}


_FRESH = """
import importlib, importlib.util, sys, types
spec = importlib.util.find_spec({pkg!r})
stub = types.ModuleType({pkg!r})  # the package without running its __init__ (which fixes the order)
stub.__path__ = list(spec.submodule_search_locations)
sys.modules[{pkg!r}] = stub
for name in {order!r}:
    importlib.import_module({pkg!r} + "." + name)
del sys.modules[{pkg!r}]
importlib.import_module({pkg!r})  # and the real package on top of the loaded modules
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("first", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    """``first``, then every other core module in reverse order (the forward order is ``__init__``'s own)."""
    order = [first] + [m for m in reversed(MODULES) if m != first]
    code = _FRESH.format(pkg=PKG, order=order)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"], "importing the core modules loaded torch"
