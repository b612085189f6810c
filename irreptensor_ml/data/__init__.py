"""Data pipeline: validated records -> union split -> periodic graphs -> irrep targets -> batches.

Modules: :mod:`.records` (load/validate the shipped files), :mod:`.graphs` (pymatgen neighbor
lists, cached), :mod:`.batch` (collate with per-property masks), :mod:`.splits` (one split over
the union of materials, StructureMatcher grouping), :mod:`.normalization` (per-irrep-block
normalizer), :mod:`.datamodule` (Lightning data module), :mod:`.cache` (cache dir and hashing).
"""

from importlib import import_module

# Lazy exports (PEP 562): batches, graphs loaded from a cache and the normalizer work without pymatgen
# (e.g. on a GPU machine fed with exported graphs); records, splits and the data module need it.
_EXPORTS = {
    "Batch": "batch", "collate": "batch",
    "default_cache_dir": "cache",
    "DataConfig": "datamodule", "GraphTargetDataset": "datamodule", "TensorDataModule": "datamodule",
    "CrystalGraph": "graphs", "build_graphs": "graphs", "structure_to_graph": "graphs",
    "IrrepNormalizer": "normalization",
    "LoadReport": "records", "Record": "records", "SkippedRecord": "records", "load_records": "records",
    "material_keys": "splits", "side_of": "splits", "universe_material_keys": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"irreptensor_ml.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'irreptensor_ml.data' has no attribute {name!r}")
