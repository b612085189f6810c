"""Run provenance: package versions, hardware, and atomic JSON/YAML/CSV writers for run records.

Every training run writes, beside its checkpoints, ``config.yaml`` (the resolved configuration)
and ``run_info.json`` (configuration, data-file hashes, the train/val/test split, package
versions, hardware, timings), so that a model file can always be traced to its data and code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from irreptensor_ml.atomic import atomic_write_text

__all__ = [
    "package_versions",
    "source_revision",
    "hardware_info",
    "write_json",
    "write_yaml",
    "read_metrics_csv",
    "write_metrics_csv",
    "python_command",
]

_PACKAGES = (
    "irreptensor",
    "torch",
    "e3nn",
    "lightning",
    "torchmetrics",
    "pymatgen",
    "numpy",
    "sympy",
    "spglib",
    "pyyaml",
)


def package_versions() -> dict[str, str | None]:
    """``{package: version}`` of Python and the relevant packages (``None`` if not installed), and
    ``irreptensor_source``: the git revision of the running code (:func:`source_revision`)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["irreptensor_source"] = source_revision()
    return out


_CODE_DIRS = ("irreptensor", "irreptensor_ml")


def source_revision(root: str | os.PathLike[str] | None = None) -> str | None:
    """Git commit of the code that runs, ``"<sha>+dirty"`` when its packages have uncommitted
    changes, ``None`` outside a git checkout (an installed wheel) or without git.

    The package version alone does not tell a result made by committed code from one made by
    work in progress, whose run ids or numbers the committed code may not give again.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    if not all((root / d).is_dir() for d in _CODE_DIRS):
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *_CODE_DIRS)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """Host, OS, CPU model and count, torch threads and CUDA devices (name, memory in GiB)."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cuda_devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            info["cuda_devices"].append(
                {"name": prop.name, "memory_gib": round(prop.total_memory / 2**30, 2)}
            )
    return info


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-JSON values are converted with ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike[str], obj: Mapping[str, Any]) -> None:
    """Atomically write a plain mapping as YAML (keys kept in insertion order)."""
    atomic_write_text(path, yaml.safe_dump(dict(obj), sort_keys=False))


def read_metrics_csv(path: str | os.PathLike[str], max_epoch: int | None = None) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (none if the file is absent or empty).

    With ``max_epoch``, rows of later epochs are dropped: when a run resumes from the checkpoint
    of epoch ``max_epoch``, those rows belong to an epoch it trains again."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if max_epoch is None:
        return rows

    def epoch(row: Mapping[str, str]) -> float:
        try:
            return float(row.get("epoch") or "nan")
        except ValueError:
            return float("nan")

    return [r for r in rows if not epoch(r) > max_epoch]


def write_metrics_csv(path: str | os.PathLike[str], rows: list[Mapping[str, Any]]) -> None:
    """Atomically write ``rows`` as CSV (:mod:`irreptensor_ml.atomic`, so a reader or a killed
    process never sees a partial file); the columns are the union of the rows' keys, in first-seen order."""
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def python_command() -> list[str]:
    """The command line of this process (recorded in ``run_info.json``)."""
    return [sys.executable, *sys.argv]
