"""``python -m irreptensor_ml.train CONFIG RUN_DIR [section.key=value ...]``: run :func:`fit`.

CONFIG is a YAML path or a shipped name (``default``, ``tiny``).  This entry point exists so that
Lightning's DDP launcher can re-run the same command in each worker process.
"""

from __future__ import annotations

import argparse
import sys

from irreptensor_ml.train.fit import fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irreptensor_ml.train", description=__doc__)
    parser.add_argument("config", help="YAML config path or shipped config name (default, tiny)")
    parser.add_argument("run_dir", help="output directory (resumed if it has checkpoints/last.ckpt)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing last.ckpt")
    args = parser.parse_args(argv)
    path = fit(args.config, args.run_dir, overrides=args.overrides, resume=not args.no_resume)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
