"""The transfer study's files: :class:`RunStore` (records, models and test predictions of finished
runs under ``results_dir``) and the study data (:func:`load_study_data`, :func:`data_file`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from irreptensor_ml.atomic import atomic_write_text, atomic_writer
from irreptensor_ml.transfer.studydata import PROPERTIES, StudyData

__all__ = ["RunStore", "data_file", "load_study_data"]

#: data-config keys that only affect how the data are read, not what they are
_DATA_EXECUTION_KEYS = ("cache_dir", "progress", "num_workers", "batch_size", "dtype", "data_root")


class RunStore:
    """Files of finished runs under ``results_dir`` (layout: :mod:`irreptensor_ml.transfer.study`)."""

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        self.root = Path(results_dir)

    @property
    def feature_cache_dir(self) -> Path:
        """Cache directory of the foundation trunk's features (``<root>/features``)."""
        return self.root / "features"

    def record_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def model_path(self, run_id: str) -> Path:
        return self.root / "models" / f"{run_id}.pt"

    def predictions_path(self, run_id: str) -> Path:
        return self.root / "predictions" / f"{run_id}.json"

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id`` or ``None`` (missing or unreadable)."""
        path = self.record_path(run_id)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("status") == "finished" else None

    def load_predictions(self, run_id: str) -> dict[str, Any]:
        """Per-material test predictions of a final run (``ValueError`` if missing)."""
        path = self.predictions_path(run_id)
        if not path.is_file():
            raise ValueError(f"no test predictions stored for run {run_id} ({path})")
        return json.loads(path.read_text())

    def import_run(self, other: RunStore, run_id: str, final: bool) -> bool:
        """Copy the files of ``run_id`` from ``other`` if it finished there (with its test
        metrics and predictions if ``final``) and is not stored here; returns whether it did."""
        rec = other.load(run_id)
        if rec is None or self.load(run_id) is not None or not other.model_path(run_id).is_file():
            return False
        if final and ("test" not in rec or not other.predictions_path(run_id).is_file()):
            return False
        files = [(other.model_path(run_id), self.model_path(run_id))]
        if other.predictions_path(run_id).is_file():
            files.append((other.predictions_path(run_id), self.predictions_path(run_id)))
        for src, dst in files:
            with open(src, "rb") as fin, atomic_writer(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        self.save({**rec, "imported_from": str(other.root)})  # the record last: it marks the run done
        return True

    def save(self, record: Mapping[str, Any]) -> Path:
        """Write a run record atomically."""
        return _atomic_json(self.record_path(str(record["run_id"])), record)

    def save_test(self, run_id: str, metrics: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
        """Add test metrics to the record and write the per-material predictions (a model with
        parts: their metrics, ``predictions["parts"][key]["metrics"]``, go to ``test_parts``)."""
        rec = self.load(run_id)
        if rec is None:
            raise ValueError(f"run {run_id} has no stored record; train it first")
        _atomic_json(self.predictions_path(run_id), predictions)
        rec["test"] = dict(metrics)
        parts = predictions.get("parts") or {}
        if parts:
            rec["test_parts"] = {k: dict(v.get("metrics") or {}) for k, v in parts.items()}
        rec["test_evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save(rec)


def _atomic_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False, default=str) + "\n")


def load_study_data(config: Mapping[str, Any], from_cache: str | os.PathLike[str] | None = None) -> StudyData:
    """Study data from an exported cache file, or built from the data files (needs pymatgen).

    A cache whose data settings differ from ``config["data"]`` in anything that changes the data
    (cutoff, sources, split, limit, symmetry check ...) is refused with a ``ValueError`` naming
    the differing keys.
    """
    if from_cache is None:
        return StudyData.build(config["data"])
    data = StudyData.load(from_cache)
    from irreptensor_ml.data.datamodule import DataConfig

    wanted = DataConfig.from_dict(
        {**config["data"], "properties": list(PROPERTIES), "train_fraction": 1.0}
    ).to_dict()
    have = dict(data.data_config)
    diff = sorted(
        k for k in set(wanted) | set(have)
        if k not in _DATA_EXECUTION_KEYS and k != "properties" and wanted.get(k) != have.get(k)
    )
    if diff:
        raise ValueError(
            f"cache {str(from_cache)!r} was built with other data settings: "
            + ", ".join(f"{k}={have.get(k)!r} (config: {wanted.get(k)!r})" for k in diff)
        )
    return data


def data_file(results_dir: Path, data: StudyData, from_cache: str | os.PathLike[str] | None) -> Path:
    """Path of a weights-only data file for worker processes (writes one if needed)."""
    if from_cache is not None:
        return Path(from_cache)
    path = results_dir / "data" / f"{data.fingerprint[:16]}.pt"
    if not path.is_file():
        data.save(path)
    return path
