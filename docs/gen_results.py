"""Build the "Results and benchmarks" page of the documentation from the committed result files.

Nothing on that page is typed by hand: it is rendered at every ``mkdocs build`` (by the hook in
``docs/hooks.py``) from

* ``results/transfer/**/summary.json`` -- the transfer study's machine-readable summary
  (:func:`irreptensor_ml.transfer.report.summarize`); rendered with the study's own
  :func:`irreptensor_ml.transfer.report.markdown_report` (or, if that cannot be imported, with the
  compact table of :func:`compact_transfer_table`), with the plots found beside it;
* ``BENCHMARKS.md`` at the repository root (timings of the core and analysis functions);
* ``results/**/*.json`` files holding ``{"meta": {...}, "results": [flat rows]}`` (the format of
  ``benchmarks/ml.py --json``), rendered as tables;
* any other ``results/**/*.json`` file, listed by name.

When no transfer results are committed yet the page says so instead of failing.

Run it by hand to see the page: ``python docs/gen_results.py [REPO_ROOT]`` prints the Markdown.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: Site path of the generated page (relative to ``docs/``).
PAGE = "benchmarks.md"
#: Site folder that receives the images the page shows (copied from the repository).
ASSET_DIR = "generated"
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class ResultsPage:
    """The rendered page: Markdown text and the files it links to (site path -> bytes)."""

    markdown: str
    assets: dict[str, bytes] = field(default_factory=dict)
    transfer_summaries: list[Path] = field(default_factory=list)


def shift_headings(text: str, top_level: int) -> str:
    """Shift the Markdown ATX headings of ``text`` so that the highest one gets level ``top_level``.

    Lines inside fenced code blocks are left alone; levels are capped at 6.
    """
    lines = text.splitlines()
    levels, in_code = [], False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^(#{1,6})\s", line)):
            levels.append(len(m.group(1)))
    if not levels:
        return text
    shift = top_level - min(levels)
    out, in_code = [], False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^(#{1,6})(\s.*)$", line)):
            line = "#" * min(6, max(1, len(m.group(1)) + shift)) + m.group(2)
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def rewrite_links(text: str, source_dir: Path, repo_root: Path, assets: dict[str, bytes]) -> str:
    """Make the relative links of a Markdown file from ``source_dir`` valid on the generated page.

    * a link into ``docs/`` becomes a link to that page of the site;
    * an image (or a link to an image) that exists in the repository is copied to the site
      (``generated/<path in the repository>``) and linked there;
    * any other relative link (a source file, a folder) is not part of the site: it is replaced by
      its text followed by the repository path in code, so that the strict build has no dead link.
    """
    docs = (repo_root / "docs").resolve()
    root = repo_root.resolve()

    def repl(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            return m.group(0)  # absolute URL or anchor on the same page
        path_part, _, anchor = target.partition("#")
        path = (source_dir / path_part).resolve()
        try:
            rel_docs = path.relative_to(docs)
            return f"{bang}[{label}]({rel_docs.as_posix()}{'#' + anchor if anchor else ''})"
        except ValueError:
            pass
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.name
            site = f"{ASSET_DIR}/{rel}"
            assets[site] = path.read_bytes()
            return f"{bang}[{label}]({site})"
        try:
            shown = path.relative_to(root).as_posix()
        except ValueError:
            shown = path_part
        return f"{label} (`{shown}`)" if label else f"`{shown}`"

    out, in_code = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        out.append(line if in_code else _LINK.sub(repl, line))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def is_transfer_summary(data: Any) -> bool:
    """True for the dict written by the transfer study as ``summary.json``."""
    return isinstance(data, Mapping) and {"config", "results", "pretrain"} <= set(data)


def _fmt(ms: Mapping[str, Any] | None) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` dict; ``–`` if missing."""
    if not isinstance(ms, Mapping) or ms.get("mean") is None:
        return "–"
    mean = float(ms["mean"])
    if ms.get("std") is None or not math.isfinite(float(ms["std"])):
        return f"{mean:.4g} (n={ms.get('n', 1)})"
    return f"{mean:.4g} ± {float(ms['std']):.3g}"


def compact_transfer_table(summary: Mapping[str, Any]) -> str:
    """Headline table of a transfer summary: test Frobenius MAE per target, strategy and fraction.

    Used when :mod:`irreptensor_ml.transfer.report` cannot be imported (e.g. docs built without
    the ``ml`` extra). Each cell is ``mean ± std`` over seeds; the verdict of the paired bootstrap
    against ``scratch`` is appended when the summary has one.
    """
    units = summary.get("units", {})
    lines = []
    for target, by_strat in summary["results"].items():
        fractions = sorted({f for by_frac in by_strat.values() for f in by_frac}, key=float)
        unit = units.get(target) or "dimensionless"
        lines += [f"**{target}**: test Frobenius MAE ({unit}), mean ± std over seeds", "",
                  "| strategy | " + " | ".join(f"{100 * float(f):g} %" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for strat, by_frac in by_strat.items():
            cells = []
            for f in fractions:
                cell = by_frac.get(f) or {}
                text = _fmt((cell.get("test") or {}).get("frobenius_mae"))
                verdict = (cell.get("vs_scratch") or {}).get("verdict")
                if verdict:
                    text += f" ({'n.s.' if verdict.startswith('no') else verdict})"
                cells.append(text)
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_transfer(summary_path: Path, repo_root: Path, assets: dict[str, bytes],
                    renderer: Callable[[Mapping[str, Any]], str] | None = None) -> str:
    """Markdown of one transfer study summary (headings from level 3), with the plots beside it.

    ``renderer`` turns the summary dict into Markdown; default: the study's own
    ``irreptensor_ml.transfer.report.markdown_report``, or :func:`compact_transfer_table` when
    that cannot be imported.
    """
    summary = json.loads(summary_path.read_text())
    if renderer is None:
        try:
            from irreptensor_ml.transfer.report import markdown_report as renderer
        except ImportError:  # docs built without the ml extra
            renderer = compact_transfer_table
    # the report links its plots relative to its own folder: make those links valid on the site
    body = rewrite_links(shift_headings(renderer(summary), 3), summary_path.parent, repo_root, assets)
    rel = summary_path.relative_to(repo_root).as_posix()
    parts = [f"Source: `{rel}` (created {summary.get('created', 'unknown')}).", "", body.rstrip(), ""]
    for img in sorted(summary_path.parent.glob("*.png")):
        site = f"{ASSET_DIR}/{img.relative_to(repo_root).as_posix()}"
        if f"({site})" in body:
            continue  # already shown by the report
        assets[site] = img.read_bytes()
        parts += [f"![{img.stem}]({site})", ""]
    return "\n".join(parts)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def is_row_table(data: Any) -> bool:
    """True for ``{"results": [flat dict, ...], "meta": {...}?}`` (e.g. ``benchmarks/ml.py --json``)."""
    rows = data.get("results") if isinstance(data, Mapping) else None
    return (isinstance(rows, list) and bool(rows)
            and all(isinstance(r, Mapping) and all(_scalar(v) for v in r.values()) for r in rows))


def render_row_table(data: Mapping[str, Any]) -> str:
    """Markdown of a row-table result file: its scalar ``meta`` entries, then one table row per result."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = []
    meta = data.get("meta")
    if isinstance(meta, Mapping):
        lines += [f"- {k}: {cell(v)}" for k, v in meta.items() if _scalar(v)]
        lines.append("")
    cols: list[str] = []
    for row in data["results"]:
        cols += [k for k in row if k not in cols]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in data["results"]]
    return "\n".join(lines) + "\n"


def render_page(repo_root: str | Path,
                transfer_renderer: Callable[[Mapping[str, Any]], str] | None = None) -> ResultsPage:
    """Render the results-and-benchmarks page from the files committed under ``repo_root``.

    ``transfer_renderer``: see :func:`render_transfer`.
    """
    root = Path(repo_root)
    assets: dict[str, bytes] = {}
    out = [
        "# Results and benchmarks",
        "",
        "This page is generated at build time by `docs/gen_results.py` from the result files committed "
        "in the repository (`results/`, `BENCHMARKS.md`); nothing on it is typed by hand. Metric "
        "definitions: [error metrics](metrics.md).",
        "",
        "## Transfer study",
        "",
    ]
    summaries: list[Path] = []
    tables: list[tuple[Path, Mapping[str, Any]]] = []
    other_json: list[Path] = []
    results_dir = root / "results"
    if results_dir.is_dir():
        for path in sorted(results_dir.rglob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                other_json.append(path)
                continue
            if is_transfer_summary(data):
                summaries.append(path)
            elif is_row_table(data):
                tables.append((path, data))
            else:
                other_json.append(path)
    if summaries:
        for path in summaries:
            out += [render_transfer(path, root, assets, transfer_renderer), ""]
    else:
        out += [
            '!!! note "No transfer-study results are committed yet"',
            "    The transfer study (`irreptensor_ml/transfer/`, see the "
            "[tutorial](tutorials/transfer.md)) writes its machine-readable summary to "
            "`results/transfer/summary.json`. Once that file is committed, this section shows its "
            "tables and plots.",
            "",
        ]
    if (root / "docs" / "results.md").is_file():
        out += ["The study's own report is on the page [transfer study report](results.md).", ""]
    out += ["## Benchmarks", ""]
    bench = root / "BENCHMARKS.md"
    if bench.is_file():
        text = rewrite_links(bench.read_text(), root, root, assets)
        out += ["From `BENCHMARKS.md`:", "", shift_headings(text, 3).rstrip(), ""]
    else:
        out += ["*No `BENCHMARKS.md` is committed.*", ""]
    for path, data in tables:
        out += [f"### `{path.relative_to(root).as_posix()}`", "", render_row_table(data)]
    if other_json:
        out += ["## Other committed result files", ""]
        by_dir: dict[Path, list[Path]] = {}
        for p in other_json:
            by_dir.setdefault(p.parent, []).append(p)
        for folder, paths in by_dir.items():
            if len(paths) > 10:  # e.g. one record per run: name the folder, not every file
                out.append(f"- `{folder.relative_to(root).as_posix()}/`: {len(paths)} JSON files")
            else:
                out += [f"- `{p.relative_to(root).as_posix()}` ({p.stat().st_size:,} bytes)" for p in paths]
        out.append("")
    return ResultsPage("\n".join(out).rstrip() + "\n", assets, summaries)


if __name__ == "__main__":  # pragma: no cover - manual use
    print(render_page(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).markdown)
