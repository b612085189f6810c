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
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

__all__ = [
    "package_versions",
    "hardware_info",
    "write_json",
    "write_yaml",
    "merge_metrics_csv",
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
    """``{package: version}`` of Python and the relevant packages (``None`` if not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-JSON values are converted with ``str``)."""
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike[str], obj: Mapping[str, Any]) -> None:
    """Atomically write a plain mapping as YAML (keys kept in insertion order)."""
    _atomic_write_text(Path(path), yaml.safe_dump(dict(obj), sort_keys=False))


def merge_metrics_csv(previous: str, path: str | os.PathLike[str]) -> None:
    """Prepend the rows of an earlier ``metrics.csv`` (its text ``previous``) to ``path``.

    Lightning's CSVLogger starts a fresh file when a run resumes; this keeps the full history
    in one file, with the union of the columns.
    """
    path = Path(path)
    old_rows = list(csv.DictReader(io.StringIO(previous))) if previous.strip() else []
    new_rows = list(csv.DictReader(open(path, newline=""))) if path.is_file() else []
    if not old_rows:
        return
    fields: list[str] = []
    for row in old_rows + new_rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(old_rows + new_rows)
    _atomic_write_text(path, buf.getvalue())


def python_command() -> list[str]:
    """The command line of this process (recorded in ``run_info.json``)."""
    return [sys.executable, *sys.argv]
