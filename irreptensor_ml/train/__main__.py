"""``python -m irreptensor_ml.train CONFIG RUN_DIR [section.key=value ...]``: run :func:`fit`.

CONFIG is a YAML path or a shipped name (``default``, ``tiny``).  This entry point exists so that
Lightning's DDP launcher can re-run the same command in each worker process.
"""

from __future__ import annotations

import argparse
import sys

from irreptensor_ml.train.fit import RunDirectoryLocked, TrainingInterrupted, fit

PROG = "python -m irreptensor_ml.train"


def main(argv: list[str] | None = None) -> int:
    """Train; returns 0, or 2 after a one-line error (bad config, bad checkpoint, run directory
    in use).  SIGTERM prints one line and raises :class:`TrainingInterrupted` (exit status 143)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("config", help="YAML config path or shipped config name (default, tiny)")
    parser.add_argument("run_dir", help="output directory (resumed if it has checkpoints)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = parser.parse_args(argv)
    try:
        path = fit(args.config, args.run_dir, overrides=args.overrides, resume=not args.no_resume)
    except TrainingInterrupted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise
    except (ValueError, RunDirectoryLocked) as exc:
        print(f"{PROG}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
