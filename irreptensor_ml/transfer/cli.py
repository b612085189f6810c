"""``irreptensor-ml transfer``: run the transfer-learning study from a preset or config.

Examples::

    irreptensor-ml transfer --preset quick                      # ~quick study on the shipped data, prints the table
    irreptensor-ml transfer --preset full-cpu                   # full protocol, small model, 2 CPU cores
    irreptensor-ml transfer --preset learn-cpu                  # rerun on the tuned per-property models
                                                                # (dielectric, its electronic part,
                                                                # piezoelectric; + foundation-frozen), 2 cores
    irreptensor-ml transfer --preset full --workers 8           # full study on a local Dask cluster of 8
                                                                # worker processes (GPU if present), resumable
    irreptensor-ml transfer --preset full --scheduler-address tcp://node12:8786   # on a running Dask
                                                                # cluster (e.g. dask-jobqueue on Slurm/PBS)
    irreptensor-ml transfer --preset foundation                 # SevenNet-0 trunk vs scratch (foundation extra)
    irreptensor-ml transfer --preset full --export-cache full.pt        # on a machine with pymatgen
    irreptensor-ml transfer --preset full --from-cache full.pt --workers 8  # anywhere (no pymatgen needed)
    irreptensor-ml transfer --preset full --report-only --markdown docs/results.md \\
        --export-models irreptensor_ml/pretrained

Without the main CLI: ``python -m irreptensor_ml.transfer ...`` (same arguments).

Exit status: 0 success; 1 some runs failed (the finished ones are stored; rerun to retry);
2 user error (bad config, missing file), printed as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_transfer_parser", "cmd_transfer", "main_transfer"]

PROG = "irreptensor-ml transfer"


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from irreptensor_ml.transfer.presets import PRESETS

    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, choices=tuple(PRESETS),
                     help="shipped study preset (default: quick)")
    src.add_argument("--config", default=None, help="study YAML (merged over the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study-config entry, dotted key and YAML value, e.g. seeds=[0,1] "
                        "or train.trainer.max_epochs=5 (repeatable)")
    p.add_argument("--results-dir", default=None, help="output directory (default: the config's results_dir)")
    p.add_argument("--workers", type=int, default=None,
                   help="concurrent runs; > 1 starts a local Dask cluster of that many worker processes "
                        "(default: config)")
    p.add_argument("--scheduler-address", default=None, metavar="ADDRESS",
                   help="run on the existing Dask cluster of this scheduler (tcp://host:8786, e.g. started "
                        "with dask-jobqueue on Slurm/PBS; its workers must see the results directory)")
    p.add_argument("--from-cache", default=None, metavar="FILE",
                   help="use a study-data file written by --export-cache (no pymatgen needed)")
    p.add_argument("--export-cache", default=None, metavar="FILE",
                   help="build the study data of the config, write it to FILE and exit")
    p.add_argument("--export-models", default=None, metavar="DIR",
                   help="after the study, export the best model per property with model cards to DIR "
                        "(irreptensor_ml/pretrained makes them the predict defaults)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also copy the Markdown report to FILE (e.g. docs/results.md)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stored / to-do runs) and exit")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing; rebuild the report from the stored runs (all must be finished)")
    return p


def add_transfer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``transfer`` subcommand to the main CLI's subparsers (sets ``func``)."""
    p = subparsers.add_parser(
        "transfer", help="transfer-learning study (elastic -> dielectric (total, electronic) / piezoelectric)",
        description="Run the transfer-learning study: pretrain on elastic tensors, transfer to the "
                    "target tensors with five strategies, report learning curves with bootstrap intervals.",
    )
    _configure(p)
    p.set_defaults(func=cmd_transfer)
    return p


def cmd_transfer(args: argparse.Namespace) -> int:
    """Handler of ``transfer`` (returns the exit status; ``ValueError`` = user error)."""
    from irreptensor_ml.transfer.presets import load_study_config

    source = args.config if args.config else (args.preset or "quick")
    config = load_study_config(source, args.overrides)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.export_cache:
        from irreptensor_ml.transfer.studydata import StudyData

        data = StudyData.build(config["data"])
        path = data.save(args.export_cache)
        print(f"study data written to {path} ({path.stat().st_size / 1e6:.1f} MB; fingerprint "
              f"{data.fingerprint[:12]}; samples {data.counts()})")
        return 0
    if args.from_cache and not Path(args.from_cache).is_file():
        raise FileNotFoundError(f"cache file not found: {args.from_cache}")
    from irreptensor_ml.transfer.study import StudyError, run_study

    try:
        result = run_study(
            config, from_cache=args.from_cache, results_dir=args.results_dir, workers=args.workers,
            scheduler_address=args.scheduler_address, dry_run=args.dry_run, report_only=args.report_only,
        )
    except StudyError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    from irreptensor_ml.transfer.report import markdown_report

    root = Path(args.results_dir or config["results_dir"])
    print()
    print(markdown_report(result))
    if args.markdown:
        dest = Path(args.markdown)
        dest.parent.mkdir(parents=True, exist_ok=True)
        prefix = os.path.relpath(root.resolve(), dest.parent.resolve()).replace(os.sep, "/") + "/"
        dest.write_text(markdown_report(result, image_prefix=prefix))
        print(f"report written to {dest} (figures linked from {root})")
    if args.export_models:
        from irreptensor_ml.transfer.ship import export_models

        files = export_models(root, args.export_models)
        print("exported models: " + ", ".join(str(f) for f in files if f.name == "model.pt"))
    return 0


def main_transfer(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m irreptensor_ml.transfer``); returns the exit status."""
    parser = _configure(argparse.ArgumentParser(prog=PROG, description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)
    try:
        return cmd_transfer(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_transfer())
