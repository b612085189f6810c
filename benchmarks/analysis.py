"""Benchmark of the analysis functions (issue 3): harmonic parts, invariants, symmetrize, symmetry_class.

Usage::

    python benchmarks/analysis.py                       # 100,000 tensors, 200 symmetry_class calls
    python benchmarks/analysis.py --n 20000 --n-class 50 --json analysis.json

Runs on one CPU core (BLAS threads are pinned to 1 before numpy is imported). Each timing is the best of
``--repeat`` runs of wall-clock time (``time.perf_counter``), which is robust to other processes on a shared
machine; ``symmetry_class`` reports median / 95th percentile / mean over many tensors instead. Prints a
Markdown table and writes JSON (``--json``, default ``benchmark_analysis.json``).

Targets (issue 3): ``harmonic_parts`` and ``symmetrize`` of 100,000 elastic tensors under 1 s;
``symmetry_class`` under 5 ms per tensor. pymatgen's ``Tensor.fit_to_structure`` is timed on the same
structure for comparison (it has no batch mode: it is called per tensor).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import irreptensor as it  # noqa: E402
from irreptensor.crystal_symmetry import point_group_ops, symmetrize, symmetry_residual  # noqa: E402
from irreptensor.harmonic import harmonic_parts  # noqa: E402
from irreptensor.invariants import block_norms, distance_from_isotropy, vrh_moduli  # noqa: E402
from irreptensor.symmetry_class import ELASTIC_CLASSES, class_projector, symmetry_class  # noqa: E402


def best_of(fn, repeat: int) -> float:
    """Best wall-clock seconds of ``repeat`` calls (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def load_record(name: str, mid: str) -> dict:
    with gzip.open(ROOT / "irreptensor_ml" / "datasets" / f"{name}.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["material_id"] == mid:
                return r
    raise SystemExit(f"{mid} not found in {name}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="batch size for the vectorized functions")
    p.add_argument("--n-class", type=int, default=200, help="tensors for symmetry_class (all 8 classes)")
    p.add_argument("--n-pymatgen", type=int, default=20, help="tensors for pymatgen fit_to_structure")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmark_analysis.json", help="JSON output file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    rng = np.random.default_rng(args.seed)
    n = args.n
    C = it.compose(rng.normal(size=(n, 21)), "elastic") + it.from_voigt(np.eye(6) * 50.0, "elastic")
    rows = []

    def add(name, seconds, per, note=""):
        rows.append({"function": name, "seconds": seconds, "per_item_us": seconds / per * 1e6, "items": per,
                     "note": note})

    add("harmonic_parts (elastic, Cartesian in)", best_of(lambda: harmonic_parts(C, "elastic"), args.repeat), n,
        "target < 1 s for 100k")
    Cv = it.to_voigt(C, "elastic")
    add("harmonic_parts (elastic, Voigt in)", best_of(lambda: harmonic_parts(Cv, "elastic"), args.repeat), n)
    add("harmonic_parts + cartesian_parts()",
        best_of(lambda: harmonic_parts(C, "elastic").cartesian_parts(), args.repeat), n)
    try:
        import pymatgen  # noqa: F401

        have_pymatgen = True
    except ImportError:
        have_pymatgen = False
    r = load_record("elastic_mp2015", "mp-1143")  # Al2O3, point group -3m (12 operations)
    structure = r["structure"]
    if have_pymatgen:
        G = point_group_ops(structure)
        Gc = point_group_ops(load_record("elastic_mp2015", "mp-149")["structure"])  # Si, m-3m (48 operations)
    else:  # the same groups from generators (-3m with the 3-fold axis along z; m-3m)
        def rot(axis, angle):
            a = np.asarray(axis, float) / np.linalg.norm(axis)
            K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
            return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K

        from irreptensor.crystal_symmetry import group_closure

        G = group_closure([rot([0, 0, 1], 2 * np.pi / 3), rot([1, 0, 0], np.pi), -np.eye(3)])
        Gc = group_closure([rot([0, 0, 1], np.pi / 2), rot([1, 1, 1], 2 * np.pi / 3), -np.eye(3)])
    assert len(G) == 12 and len(Gc) == 48
    add("symmetrize (elastic, -3m, 12 ops)", best_of(lambda: symmetrize(C, "elastic", G), args.repeat), n,
        "target < 1 s for 100k")
    add("symmetry_residual (elastic, -3m)", best_of(lambda: symmetry_residual(C, "elastic", G), args.repeat), n)
    add("symmetrize (elastic, m-3m, 48 ops)", best_of(lambda: symmetrize(C, "elastic", Gc), args.repeat), n)
    e = it.compose(rng.normal(size=(n, 18)), "piezoelectric")
    add("harmonic_parts (piezoelectric)", best_of(lambda: harmonic_parts(e, "piezoelectric"), args.repeat), n)
    add("symmetrize (piezoelectric, -3m)", best_of(lambda: symmetrize(e, "piezoelectric", G), args.repeat), n)
    add("block_norms (elastic)", best_of(lambda: block_norms(C, "elastic"), args.repeat), n)
    add("distance_from_isotropy (elastic)", best_of(lambda: distance_from_isotropy(C, "elastic"), args.repeat), n)
    add("vrh_moduli (elastic, incl. 6x6 inverse)", best_of(lambda: vrh_moduli(C), args.repeat), n)
    if have_pymatgen:
        add("point_group_ops (structure -> ops, spglib)", best_of(lambda: point_group_ops(structure), args.repeat), 1)
        # one tensor at a time: ours vs pymatgen's fit_to_structure (same structure, same symprec)
        from pymatgen.core import Structure
        from pymatgen.core.tensors import Tensor

        s_obj = Structure.from_dict(structure)
        npm = args.n_pymatgen
        t_pm = best_of(lambda: [Tensor(C[i]).fit_to_structure(s_obj, symprec=0.01) for i in range(npm)], 1)
        add("pymatgen Tensor.fit_to_structure (per tensor)", t_pm, npm, "spglib + Cartesian average each call")
        t_ours_struct = best_of(lambda: [symmetrize(C[i], "elastic", s_obj) for i in range(npm)], 1)
        add("symmetrize(T, 'elastic', structure) (per tensor)", t_ours_struct, npm, "spglib each call")
    t_ours = best_of(lambda: [symmetrize(C[i], "elastic", G) for i in range(args.n_pymatgen)], 1)
    add("symmetrize(T, 'elastic', ops) (per tensor, ops reused)", t_ours, args.n_pymatgen)

    # symmetry_class: generic tensors of each class in random orientations, with 1e-3 relative noise
    samples = []
    for k in range(args.n_class):
        name = ELASTIC_CLASSES[k % len(ELASTIC_CLASSES)]
        x = class_projector(name) @ rng.normal(size=21)
        T = it.rotate(it.compose(x, "elastic"), it.random_rotation(seed=int(rng.integers(2**31))), "elastic")
        noise = it.compose(rng.normal(size=21), "elastic")
        samples.append((name, T + 1e-3 * np.linalg.norm(T) * noise / np.linalg.norm(noise)))
    symmetry_class(samples[0][1], "elastic")  # build the cached grid and projectors
    times, correct, higher = [], 0, 0
    for name, T in samples:
        t = time.perf_counter()
        res = symmetry_class(T, "elastic", tol=1e-2)
        times.append(time.perf_counter() - t)
        correct += res.name == name
        # a generic tensor of a class may lie within tol of a more symmetric class: then that class is the answer
        higher += res.name != name and ELASTIC_CLASSES.index(res.name) < ELASTIC_CLASSES.index(name) and (
            res.residual <= 1e-2)
    times = np.array(times)
    class_stats = {"median_ms": float(np.median(times) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
                   "mean_ms": float(times.mean() * 1e3), "max_ms": float(times.max() * 1e3),
                   "same_as_generated": int(correct), "higher_class_within_tol": int(higher), "n": len(samples)}
    add("symmetry_class (median of random classes)", float(np.median(times)), 1,
        f"p95 {class_stats['p95_ms']:.2f} ms, mean {class_stats['mean_ms']:.2f} ms; "
        f"{correct}/{len(samples)} = generating class, {higher} a higher class within tol; target < 5 ms")

    print(f"| function | n | total (s) | per item (us) | note |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['function']} | {row['items']} | {row['seconds']:.4f} | {row['per_item_us']:.2f} | "
              f"{row['note']} |")
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "threads": 1, "n": n, "repeat": args.repeat,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "pymatgen": have_pymatgen}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": rows, "symmetry_class": class_stats},
                                          indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
