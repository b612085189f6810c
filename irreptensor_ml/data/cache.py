"""On-disk cache location, content hashing and atomic writes for the data pipeline.

Everything slow in the data pipeline (symmetry checks, StructureMatcher grouping, neighbor
lists) is cached under one directory:

* ``$IRREPTENSOR_CACHE`` if that environment variable is set, else
* ``~/.cache/irreptensor``.

Cache entries are keyed by a SHA-256 of their *content* (structures, tensors, settings) plus
:data:`CACHE_VERSION`, so a changed input or a changed algorithm gives a new file rather than a
stale hit. Files are written atomically (:mod:`irreptensor_ml.atomic`: temporary file +
:func:`os.replace`) so that several processes (e.g. DDP ranks) can populate the cache concurrently
without reading half-written files; ``atomic_write_json`` and ``atomic_torch_save`` are re-exported
here from that module.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irreptensor_ml.atomic import atomic_torch_save, atomic_write_json  # noqa: F401  (re-exported)

#: Bump when the meaning of any cached artefact changes (graph layout, residual definition,
#: grouping rule). It is part of every cache key.
CACHE_VERSION = "irreptensor-data-1"

_ENV_VAR = "IRREPTENSOR_CACHE"


def default_cache_dir() -> Path:
    """Return the cache root: ``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor`` (not created)."""
    env = os.environ.get(_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "irreptensor"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``cache_dir`` as a Path, or :func:`default_cache_dir` when it is ``None``."""
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def hash_parts(*parts: str | bytes) -> str:
    """SHA-256 hex digest of a sequence of strings/bytes (length-prefixed, so unambiguous)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def structure_hash(structure: Any) -> str:
    """Content hash of a pymatgen ``Structure``: lattice, species and fractional coordinates.

    Floats are rounded to 10 decimals before hashing so that a JSON round trip does not change
    the key. Site properties and charges are not part of the graph and are ignored.
    """
    lattice = np.round(np.asarray(structure.lattice.matrix, dtype=np.float64), 10) + 0.0
    frac = np.round(np.asarray(structure.frac_coords, dtype=np.float64), 10) + 0.0
    species = ",".join(site.species_string for site in structure)
    return hash_parts(lattice.tobytes(), frac.tobytes(), species)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (used for data provenance in run_info)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> Any | None:
    """Read a JSON cache file; return ``None`` if it is missing or unreadable (then rebuild)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def torch_load_plain(path: Path) -> Any | None:
    """``torch.load(weights_only=True)``; return ``None`` if missing or corrupt (then rebuild)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError):
        return None
