#!/usr/bin/env python
"""Training cost per strategy from a transfer study's run records: runs, median and total wall time
(training + validation, as each run recorded it), per strategy and target, as a Markdown table::

    python scripts/run_times.py results/transfer/foundation_cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", help="a study's results directory (with runs/*.json)")
    args = ap.parse_args(argv)
    files = sorted(Path(args.results_dir, "runs").glob("*.json"))
    if not files:
        print(f"no run records in {Path(args.results_dir, 'runs')}", file=sys.stderr)
        return 2
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for f in files:
        rec = json.loads(f.read_text())
        try:
            key = (rec["spec"]["strategy"], rec["spec"]["target"])
        except (KeyError, TypeError):
            print(f"{f}: not a run record of a transfer study (no spec.strategy / spec.target)", file=sys.stderr)
            return 2
        times[key].append(float(rec.get("wall_time_s") or 0.0))
    print("| strategy | target | runs | median s per run | total s |")
    print("|---|---|---:|---:|---:|")
    for (strategy, target), ts in sorted(times.items()):
        print(f"| {strategy} | {target} | {len(ts)} | {statistics.median(ts):.1f} | {sum(ts):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
