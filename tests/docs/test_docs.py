"""The documentation cannot rot: its code runs and the site builds with warnings as errors.

1. Every ``python`` block of ``docs/getting-started.md`` and ``docs/tutorials/*.md`` is executed,
   page by page (blocks of one page share one namespace), in a fresh temporary working directory,
   with matplotlib's Agg backend and a private data cache (``IRREPTENSOR_CACHE``). A block preceded
   by ``<!-- skip-test: reason -->`` is not run (only for network access or minutes of CPU).
2. ``mkdocs build --strict`` builds the site into a temporary directory (skipped, with the reason,
   when mkdocs and its plugins are not installed).
3. The helpers of the build (block extraction, the generated results page) are tested directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hooks = _load("irreptensor_docs_hooks", DOCS / "hooks.py")
gen_results = _load("irreptensor_docs_gen_results_test", DOCS / "gen_results.py")

#: pages whose code is executed: getting started, the tutorials, and the reference pages that have examples
EXECUTED_PAGES = [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md")),
                  DOCS / "metrics.md", DOCS / "data.md", DOCS / "math.md"]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """One private cache of graphs and symmetry checks shared by the pages of this module."""
    return tmp_path_factory.mktemp("irreptensor-cache")


# ------------------------------------------------------------------------ executed pages


def test_executed_pages_exist_and_have_code():
    names = {p.name for p in EXECUTED_PAGES}
    assert {"getting-started.md", "elastic.md", "piezoelectric.md", "training.md", "transfer.md",
            "metrics.md", "data.md", "math.md"} <= names
    for page in EXECUTED_PAGES:
        blocks = hooks.python_blocks(page.read_text())
        assert any(not b.skip for b in blocks), f"{page.name} has no executed python block"


def test_skips_are_rare_and_explained():
    for page in EXECUTED_PAGES:
        blocks = hooks.python_blocks(page.read_text())
        skipped = [b for b in blocks if b.skip]
        assert len(skipped) <= 1, f"{page.name}: {len(skipped)} skipped blocks; keep skips rare"
        for b in skipped:
            assert len(b.skip_reason) >= 10, f"{page.name}:{b.line}: say why the block is skipped"


@pytest.mark.parametrize("page", EXECUTED_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_code_runs(page, tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("IRREPTENSOR_CACHE", str(data_cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # pages read committed results (results/...) relative to the repository root
    if (REPO / "results").is_dir():
        (tmp_path / "results").symlink_to(REPO / "results", target_is_directory=True)
    namespace = hooks.run_page(page, tmp_path)
    assert namespace  # executed without raising
    # figures announced for the site are really written by the page's code
    match = hooks.FIGURES_MARK.search(page.read_text())
    for name in (match.group(1).split() if match else []):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 1000, name


def test_transfer_page_reads_a_committed_summary(tmp_path, capsys):
    """The transfer tutorial's "committed results" block on a summary in the study's format."""
    out = tmp_path / "results" / "transfer" / "quick"
    out.mkdir(parents=True)
    summary = _summary()
    summary["config"]["seeds"] = [0, 1, 2]
    summary["best_on_validation"] = {"dielectric": {"strategy": "finetune", "fraction": 1.0}}
    (out / "summary.json").write_text(json.dumps(summary))
    hooks.run_page(DOCS / "tutorials" / "transfer.md", tmp_path)
    text = capsys.readouterr().out
    assert "no transfer-study results are committed yet" not in text
    assert "dielectric    finetune  50 %: 1.5 (better); 100 %: 1.5" in text
    assert "dielectric: best strategy on validation: finetune" in text


def test_getting_started_quotes_the_readme_commands():
    """The two set-up commands of the README appear verbatim on the getting-started page."""
    readme = (REPO / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("pip install torch")]
    assert len(commands) == 2
    page = (DOCS / "getting-started.md").read_text()
    for command in commands:
        assert command in page, command


def _documented_cli_calls() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``irreptensor-ml ...`` command in the bash blocks of the docs."""
    import re
    import shlex

    calls = []
    for page in sorted(DOCS.rglob("*.md")):
        in_bash = False
        for line in page.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("```"):
                in_bash = stripped in ("```bash", "```sh", "```console")
                continue
            if not in_bash:
                continue
            for part in re.split(r"&&|;", stripped.split(" #")[0]):
                words = shlex.split(part)
                if words and words[0] == "irreptensor-ml":
                    calls.append((page.relative_to(DOCS).as_posix(), words[1:]))
    return calls


def test_documented_cli_commands_parse():
    """Every ``irreptensor-ml`` command shown in the docs names a real subcommand with real options."""
    from irreptensor_ml.cli import build_parser

    calls = _documented_cli_calls()
    assert {argv[0] for _, argv in calls} >= {"train", "evaluate", "predict", "transfer"}
    bad = []
    for page, argv in calls:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            bad.append(f"{page}: irreptensor-ml {' '.join(argv)}")
    assert not bad, "commands in the docs that the CLI rejects:\n" + "\n".join(bad)


# ------------------------------------------------------------------- block extraction


def test_python_blocks_extraction_and_skip_marks():
    text = "\n".join([
        "# t", "```python", "a = 1", "```", "", "<!-- skip-test: needs the network -->", "",
        "```python", "raise SystemExit", "```", "```bash", "echo no", "```", "```python", "b = a + 1", "```",
    ])
    blocks = hooks.python_blocks(text)
    assert [b.code for b in blocks] == ["a = 1\n", "raise SystemExit\n", "b = a + 1\n"]
    assert [b.skip for b in blocks] == [False, True, False]
    assert blocks[1].skip_reason == "needs the network"
    assert [b.line for b in blocks] == [3, 9, 15]
    with pytest.raises(ValueError, match="unclosed"):
        hooks.python_blocks("```python\nx = 1\n")


def test_run_page_shares_state_and_reports_page_lines(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("```python\nx = 2\n```\n\ntext\n\n```python\ny = x * 3\n```\n")
    ns = hooks.run_page(page, tmp_path)
    assert ns["y"] == 6
    bad = tmp_path / "bad.md"
    bad.write_text("line 1\n\n```python\nok = 1\nraise RuntimeError('boom')\n```\n")
    with pytest.raises(RuntimeError, match="boom") as info:
        hooks.run_page(bad, tmp_path)
    frames = [f for f in info.traceback if str(f.path) == str(bad)]
    assert frames and frames[-1].lineno + 1 == 5  # pytest's lineno is 0-based; the raise is on line 5


# ------------------------------------------------------------------- results page


def test_results_page_without_results(tmp_path):
    (tmp_path / "BENCHMARKS.md").write_text(
        "## Core\n\nSee [conventions](docs/conventions.md#parity) and [the script](benchmarks/x.py).\n\n"
        "| f | t |\n|---|---|\n| decompose | 1 ms |\n\n```\n# not a heading\n```\n"
    )
    page = gen_results.render_page(tmp_path)
    md = page.markdown
    assert "No transfer-study results are committed yet" in md
    assert "### Core" in md and "# not a heading" in md  # headings shifted, code untouched
    assert "[conventions](conventions.md#parity)" in md  # docs links become site links
    assert "the script (`benchmarks/x.py`)" in md  # links out of the site become text
    assert "| decompose | 1 ms |" in md
    assert page.transfer_summaries == []


def _summary() -> dict:
    cell = {"runs": [], "test": {"frobenius_mae": {"mean": 1.5, "std": 0.25, "n": 3}}}
    return {
        "name": "quick", "created": "2026-01-01T00:00:00Z", "config": {"fractions": [0.5, 1.0]},
        "pretrain": {"property": "elastic", "runs": [], "test": {}},
        "units": {"dielectric": ""},
        "results": {"dielectric": {
            "scratch": {"0.5": cell, "1": cell},
            "finetune": {"0.5": {**cell, "vs_scratch": {"verdict": "better"}}, "1": cell},
        }},
    }


def test_results_page_compact_transfer_table():
    table = gen_results.compact_transfer_table(_summary())
    assert "| strategy | 50 % | 100 % |" in table
    assert "| finetune | 1.5 ± 0.25 (better) | 1.5 ± 0.25 |" in table
    assert "dimensionless" in table


def test_results_page_finds_committed_summary(tmp_path):
    out = tmp_path / "results" / "transfer"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(_summary()))
    (out / "notes.json").write_text("{}")
    bench = {"meta": {"torch": "2.13", "nested": {"x": 1}},
             "results": [{"device": "cpu", "infer_ms": 1.23456}, {"device": "cuda", "infer_ms": 0.1, "peak_mem_mb": 50}]}
    (tmp_path / "results" / "benchmark_ml.json").write_text(json.dumps(bench))
    page = gen_results.render_page(tmp_path, transfer_renderer=gen_results.compact_transfer_table)
    assert page.transfer_summaries == [out / "summary.json"]
    assert "| finetune | 1.5 ± 0.25 (better) | 1.5 ± 0.25 |" in page.markdown
    assert "No transfer-study results" not in page.markdown
    assert "results/transfer/notes.json" in page.markdown  # other result files are listed
    assert "| device | infer_ms | peak_mem_mb |" in page.markdown  # row tables become tables
    assert "| cpu | 1.235 |  |" in page.markdown and "- torch: 2.13" in page.markdown


def test_results_page_of_this_repository():
    page = gen_results.render_page(REPO)
    bench = REPO / "BENCHMARKS.md"
    if bench.is_file():
        first_row = next(line for line in bench.read_text().splitlines() if line.startswith("| ") and "---" not in line)
        assert first_row in page.markdown  # the page is generated from the committed file
    has_summary = any(gen_results.is_transfer_summary(json.loads(p.read_text()))
                      for p in (REPO / "results").rglob("*.json")) if (REPO / "results").is_dir() else False
    assert ("No transfer-study results are committed yet" in page.markdown) != has_summary


# ------------------------------------------------------------- include lines, export script


def test_include_lines_shift_headings():
    text, assets = hooks.include_files("# Data\n\n<!-- include: irreptensor_ml/datasets/README.md heading=3 -->\n")
    assert text.startswith("# Data")
    assert "### Crystal tensor datasets" in text and "#### Validation applied to every record" in text
    assert "<!-- include:" not in text and assets == {}


EXPORT_SCRIPT = REPO / "scripts" / "export_mp.py"


def _run_export(*args: str, block_mp_api: bool = True) -> subprocess.CompletedProcess:
    """Run the export script in a subprocess in which ``import mp_api`` fails."""
    code = ("import runpy, sys\n"
            + ("sys.modules['mp_api'] = None\n" if block_mp_api else "")
            + f"sys.argv = ['export_mp.py', *{list(args)!r}]\n"
            + f"runpy.run_path({str(EXPORT_SCRIPT)!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "MP_API_KEY"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_export_script_help_and_errors_without_mp_api(tmp_path):
    proc = _run_export("--help")
    assert proc.returncode == 0 and "usage: export_mp.py" in proc.stdout and "IEEE" in proc.stdout
    out = str(tmp_path / "elastic_mpfresh.jsonl.gz")
    proc = _run_export("elastic", "--out", out)
    assert proc.returncode == 2 and "no API key" in proc.stderr
    proc = _run_export("elastic", "--out", out, "--api-key", "not-a-key")
    assert proc.returncode == 2 and "mp-api client is not installed" in proc.stderr
    proc = _run_export("elastic", "--out", str(tmp_path / "wrong_name.json"), "--api-key", "x")
    assert proc.returncode == 2 and "elastic_<source>.jsonl.gz" in proc.stderr


def _shipped(file_name: str, material_id: str) -> dict:
    import gzip

    path = REPO / "irreptensor_ml" / "datasets" / file_name
    with gzip.open(path, "rt") as f:
        return next(r for r in map(json.loads, f) if r["material_id"] == material_id)


def test_export_conversion_recovers_frames_and_loads(tmp_path):
    """Documents shaped like the Materials Project's (IEEE-frame piezo tensor, raw elastic tensor with
    its optimized structure) become records in the structure's frame that ``load_records`` accepts."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("pymatgen")
    import irreptensor as it
    from pymatgen.core import Lattice, Structure

    from irreptensor_ml.data import load_records

    export = _load("irreptensor_docs_export_mp", EXPORT_SCRIPT)
    piezo = _shipped("piezoelectric_mp2015.jsonl.gz", "mp-661")        # wurtzite AlN
    S = Structure.from_dict(piezo["structure"])
    T = np.array(piezo["tensor"])
    Q = it.random_rotation(seed=5)                                     # the "POSCAR" orientation
    S0 = Structure(Lattice(S.lattice.matrix @ Q.T), S.species, S.frac_coords)
    _, R = export.ieee_structure(S0)
    T_ieee = it.rotate(it.rotate(T, Q, "piezoelectric"), R, "piezoelectric")
    docs = [
        {"material_id": "mp-661", "total": it.to_voigt(T_ieee, "piezoelectric").tolist()},
        {"material_id": "mp-wrong-frame",
         "total": it.to_voigt(it.rotate(T_ieee, it.random_rotation(seed=9), "piezoelectric"), "piezoelectric").tolist()},
        {"material_id": "mp-no-structure", "total": it.to_voigt(T_ieee, "piezoelectric").tolist()},
    ]
    records, skipped = export.records_from_docs(docs, "piezoelectric", {"mp-661": S0, "mp-wrong-frame": S0.as_dict()})
    assert [r["material_id"] for r in records] == ["mp-661"]
    assert records[0]["meta"]["tensor_frame"] == "total/ieee_rotated_structure"
    assert records[0]["meta"]["sym_residual"] < 1e-8
    assert dict(skipped).keys() == {"mp-wrong-frame", "mp-no-structure"}

    elastic = _shipped("elastic_mp2015.jsonl.gz", "mp-988")
    doc = {"material_id": "mp-988", "elastic_tensor": {"raw": elastic["voigt"], "ieee_format": None},
           "optimized_structure": elastic["structure"]}
    el_records, el_skipped = export.records_from_docs([doc], "elastic", {})
    assert el_skipped == [] and el_records[0]["meta"]["tensor_frame"] == "raw/optimized_structure"
    assert np.allclose(el_records[0]["tensor"], elastic["tensor"], atol=1e-6)

    export.write_jsonl_gz(records, tmp_path / "piezoelectric_mpfresh.jsonl.gz")
    export.write_jsonl_gz(el_records, tmp_path / "elastic_mpfresh.jsonl.gz")
    for prop in ("piezoelectric", "elastic"):
        loaded = load_records(prop, sources="mp", root=tmp_path, cache_dir=tmp_path / "cache")
        assert len(loaded) == 1 and loaded.report.n_skipped == 0


# ------------------------------------------------------------------------ site build


def test_mkdocs_build_strict(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]
    if missing:
        pytest.skip(f"mkdocs build not tested: {', '.join(missing)} not installed "
                    "(pip install mkdocs mkdocs-material 'mkdocstrings[python]')")
    env = {**os.environ, "MPLBACKEND": "Agg", "NO_MKDOCS_2_WARNING": "1",
           "IRREPTENSOR_CACHE": str(tmp_path / "cache")}
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    for page in ("index.html", "getting-started/index.html", "benchmarks/index.html",
                 "api/core/index.html", "api/ml/index.html", "tutorials/elastic/index.html"):
        assert (site / page).is_file(), page
    assert (site / "tutorials" / "young_modulus.png").is_file()
    api = (site / "api" / "core" / "index.html").read_text()
    assert "decompose" in api and "wigner_D" in api  # generated from the docstrings
    shutil.rmtree(site, ignore_errors=True)
