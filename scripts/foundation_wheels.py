#!/usr/bin/env python
"""Wheels of the ``foundation`` extra for a GPU machine that lacks them (sevenn, ase, braceexpand,
matscipy; torch, e3nn and torch-geometric are assumed there), small enough to carry.

The sevenn wheel (43 MB) ships four checkpoints; only SevenNet-0 (11 Jul 2024, the ``7net-0`` the
foundation trunk loads) is kept, and the wheel's RECORD is rewritten to match (~12 MB)::

    python scripts/foundation_wheels.py --dest .whl --python-version 3.12
    # on the GPU machine:
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from irreptensor_ml.atomic import atomic_writer

PACKAGES = ["sevenn==0.13.0", "ase==3.29.0", "braceexpand==0.1.7", "matscipy==1.3.1"]
KEEP = "SevenNet_0__11Jul2024/"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]


def trim_sevenn(wheel: Path) -> Path:
    """Rewrite ``wheel`` without the checkpoints other than :data:`KEEP` (RECORD updated)."""
    drop = lambda name: "pretrained_potentials/" in name and name.endswith(".pth") and KEEP not in name  # noqa: E731
    with zipfile.ZipFile(wheel) as src, atomic_writer(wheel, "wb") as fh, \
            zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if not drop(l.split(",")[0])) + "\n").encode()
            dst.writestr(info, data)
    return wheel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=".whl")
    ap.add_argument("--python-version", default="3.12")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", args.python_version, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + PACKAGES, check=True)
    for wheel in dest.glob("sevenn-*.whl"):
        trim_sevenn(wheel)
    for wheel in sorted(dest.glob("*.whl")):
        print(f"{wheel.stat().st_size / 1e6:6.1f} MB  {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
