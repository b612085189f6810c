"""mkdocs hooks of the irreptensor documentation (registered under ``hooks:`` in ``mkdocs.yml``).

1. **Results page.** ``benchmarks.md`` is not a file in ``docs/``: it is generated at every build by
   :func:`gen_results.render_page` from the committed result files, with the images it shows.
   If the transfer study has written ``docs/results.md``, that page is added to the navigation
   beside it.
2. **Included files.** A line ``<!-- include: PATH heading=N -->`` in a page is replaced by the file
   ``PATH`` (relative to the repository root) with its headings shifted so that the highest is level
   ``N`` and its relative links made valid on the site (see :func:`gen_results.rewrite_links`); used
   for the datasets README, so that its provenance text exists in one place only.
3. **Tutorial figures.** A page that contains the comment ``<!-- build-figures: a.png b.png -->``
   has its ``python`` code blocks executed at build time (in a temporary directory, matplotlib's
   Agg backend), and the listed files that the code writes are published next to the page, so the
   figures on the site are made by the code on the page. A failing block fails the build.

The same block extraction and execution are used by ``tests/docs/test_docs.py``, which runs every
``python`` block of ``getting-started.md`` and ``tutorials/*.md``.

Block rules: a block is a fenced block whose opening fence is exactly ```` ```python ```` at the
start of a line; the blocks of one page share one namespace, in order. A block preceded (on the
previous non-blank line) by ``<!-- skip-test -->`` or ``<!-- skip-test: reason -->`` is shown but
not executed; use it only for code that needs the network or minutes of CPU, and say why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
SKIP_MARK = re.compile(r"^<!--\s*skip-test(:.*)?-->\s*$")
FIGURES_MARK = re.compile(r"<!--\s*build-figures:\s*(.*?)\s*-->")
INCLUDE_MARK = re.compile(r"^<!--\s*include:\s*(\S+)\s+heading=(\d)\s*-->\s*$", re.M)


@dataclass(frozen=True)
class CodeBlock:
    """One ``python`` fenced block of a Markdown page."""

    code: str
    line: int  # 1-based line number of the first code line in the page
    skip: bool
    skip_reason: str = ""


def python_blocks(text: str) -> list[CodeBlock]:
    """The ``python`` fenced blocks of a Markdown text, in order, with their skip marks."""
    lines = text.splitlines()
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        if lines[i].rstrip() == "```python":
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            mark = SKIP_MARK.match(lines[j].strip()) if j >= 0 else None
            start = i + 1
            k = start
            while k < len(lines) and lines[k].rstrip() != "```":
                k += 1
            if k == len(lines):
                raise ValueError(f"unclosed ```python block opened at line {i + 1}")
            reason = (mark.group(1) or "").lstrip(":").strip() if mark else ""
            blocks.append(CodeBlock("\n".join(lines[start:k]) + "\n", start + 1, bool(mark), reason))
            i = k + 1
        else:
            i += 1
    return blocks


@contextlib.contextmanager
def working_directory(path: Path):
    """Temporarily change the current directory."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def run_page(page: Path, workdir: Path) -> dict[str, Any]:
    """Execute the non-skipped ``python`` blocks of ``page`` in ``workdir``; returns the namespace.

    Tracebacks point at the page and its line numbers. matplotlib is switched to Agg and its
    figures are closed afterwards.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
    except ImportError:  # pragma: no cover - matplotlib is a dependency of the ml extra
        matplotlib = None
    namespace: dict[str, Any] = {"__name__": "__docs__", "__file__": str(page)}
    with working_directory(workdir):
        try:
            for block in python_blocks(page.read_text()):
                if block.skip:
                    continue
                code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
                exec(code, namespace)  # noqa: S102 - executing the documentation is the point
        finally:
            if matplotlib is not None:
                import matplotlib.pyplot as plt

                plt.close("all")
    return namespace


def _load_gen_results():
    spec = importlib.util.spec_from_file_location("irreptensor_docs_gen_results", DOCS_DIR / "gen_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ mkdocs hooks


def on_config(config, **kwargs):
    """Add ``results.md`` (written by the transfer study) to the nav when it exists."""
    if (Path(config["docs_dir"]) / "results.md").is_file() and config.get("nav"):
        for i, item in enumerate(config["nav"]):
            if isinstance(item, dict) and item.get("Results and benchmarks") == "benchmarks.md":
                config["nav"][i] = {"Results and benchmarks": [
                    {"Results and benchmarks": "benchmarks.md"},
                    {"Transfer study report": "results.md"},
                ]}
    return config


def include_files(markdown: str, page_dir: Path | None = None) -> tuple[str, dict[str, bytes]]:
    """Expand the ``<!-- include: PATH heading=N -->`` lines of a page (see the module doc).

    Returns the new Markdown and the images it links to (site path -> bytes). A missing file raises.
    """
    gen = _load_gen_results()
    assets: dict[str, bytes] = {}

    def repl(m: re.Match[str]) -> str:
        path = REPO_ROOT / m.group(1)
        if not path.is_file():
            raise FileNotFoundError(f"include: {path} does not exist")
        text = gen.rewrite_links(path.read_text(), path.parent, REPO_ROOT, assets)
        text = gen.shift_headings(text, int(m.group(2)))
        if page_dir is not None:  # the page is not at the site root: make generated links relative to it
            depth = len(page_dir.parts)
            text = text.replace(f"]({gen.ASSET_DIR}/", f"]({'../' * depth}{gen.ASSET_DIR}/")
        return text

    return INCLUDE_MARK.sub(repl, markdown), assets


def _study_report_links(markdown: str, docs_dir: Path, assets: dict[str, bytes]) -> str:
    """``results.md`` (written by ``irreptensor-ml transfer --markdown``) links its figures in
    ``results/transfer/...`` outside ``docs/``: publish them like the images of included files."""
    return _load_gen_results().rewrite_links(markdown, docs_dir, REPO_ROOT, assets)


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Expand include lines and fix the study report's links (images registered in :func:`on_files`)."""
    if page.file.src_uri == "results.md":
        markdown = _study_report_links(markdown, Path(config["docs_dir"]), {})
    if "<!-- include:" not in markdown:
        return markdown
    page_dir = Path(page.file.src_uri).parent
    return include_files(markdown, page_dir if page_dir.parts else None)[0]


def on_files(files, config, **kwargs):
    """Generate the results page and the tutorial figures as files of the site."""
    from mkdocs.structure.files import File

    gen = _load_gen_results()
    page = gen.render_page(REPO_ROOT)
    files.append(File.generated(config, gen.PAGE, content=page.markdown))
    for site_path, data in page.assets.items():
        files.append(File.generated(config, site_path, content=data))

    docs_dir = Path(config["docs_dir"])
    report = docs_dir / "results.md"
    if report.is_file():
        assets: dict[str, bytes] = {}
        _study_report_links(report.read_text(), docs_dir, assets)
        for site_path, data in assets.items():
            if files.get_file_from_path(site_path) is None:
                files.append(File.generated(config, site_path, content=data))
    for md in sorted(docs_dir.rglob("*.md")):  # images of included files
        if INCLUDE_MARK.search(md.read_text()):
            for site_path, data in include_files(md.read_text())[1].items():
                if files.get_file_from_path(site_path) is None:
                    files.append(File.generated(config, site_path, content=data))
    for md in sorted(docs_dir.rglob("*.md")):
        match = FIGURES_MARK.search(md.read_text())
        if not match:
            continue
        names = match.group(1).split()
        with tempfile.TemporaryDirectory(prefix="irreptensor-docs-") as tmp, \
                contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the page's output is not part of the build log
            run_page(md, Path(tmp))
            rel_dir = md.parent.relative_to(docs_dir)
            for name in names:
                produced = Path(tmp) / name
                if not produced.is_file():
                    raise RuntimeError(f"{md}: the page's code did not write the figure {name!r}")
                site = (rel_dir / name).as_posix()
                files.append(File.generated(config, site, content=produced.read_bytes()))
    return files
