"""Benchmark of the core package against e3nn 0.6, side by side in one run (a script, not a test).

Measured, each as the median of ``--repeats`` (>= 5) timed runs after warm-up, wall time
(``time.perf_counter``) and CPU time of the process (``time.process_time``, all threads) both recorded:

(a) ``cold_start``: wall time of a FRESH ``python -c`` subprocess that imports the package and
    decomposes one isotropic elastic tensor, ours (``irreptensor.decompose``) vs e3nn
    (``CartesianTensor("ijkl=jikl=klij").from_cartesian``, which derives its basis on first use).
    Target: ours >= 10x faster.
(b) ``decompose`` / ``compose`` of ``--n`` (100,000) elastic tensors, float64, CPU: ours vs e3nn with a
    prebuilt ``rtp = ct.reduced_tensor_products()`` (``ct.from_cartesian(T, rtp)`` /
    ``ct.to_cartesian(x, rtp)``) vs the floor, a bare numpy matmul of the same shape
    (``(n, 81) @ (81, 21)`` / ``(n, 21) @ (21, 81)``). Targets: ours <= e3nn and <= 1.5x the floor.
(c) ``wigner_D``: ``--n`` rotations, elastic irreps ``2x0e+2x2e+1x4e``, float64: ours vs e3nn
    ``Irreps.D_from_matrix``. Target: ours >= 50x faster. Ours (default: one thread) is also timed with
    ``threads=None`` (as many threads as BLAS would use: the usable CPUs; e3nn uses torch's default threads).
(d) precision, float64: round-trip ``max|compose(decompose(T)) - T| / max|T|`` and equivariance
    ``max|decompose(rotate(T, R)) - D(R) decompose(T)| / max|x|`` for ours and for e3nn
    (``to_cartesian(from_cartesian(T))``, ``from_cartesian(R.T) - D_from_matrix(R) @ from_cartesian(T)``).

The first touch of newly allocated memory is slow on some VMs, so every timed call is preceded by an
untimed call of the same function (``WARM_EACH``), for both libraries alike. torch runs with ``torch.set_default_dtype(float64)``
and its default intra-op threads; numpy's BLAS with whatever the environment sets (``OPENBLAS_*`` is
reported, not changed).

Usage::

    python benchmarks/core.py                       # full run (a few minutes), writes benchmark_core.json
    python benchmarks/core.py --n 20000 --repeats 5 --json /tmp/core.json

Prints a Markdown table and writes JSON with the machine description (CPU model, cores, versions,
BLAS configuration) and every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path and (_REPO / "irreptensor").is_dir():
    sys.path.insert(0, str(_REPO))

ELASTIC_FORMULA = "ijkl=jikl=klij"
ELASTIC_IRREPS = "2x0e+2x2e+1x4e"


# ------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, core count, library versions and the BLAS numpy and torch link against."""
    import torch

    import e3nn

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "e3nn": e3nn.__version__,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))},
    }
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as exc:  # older numpy: no dict mode
        info["numpy_blas"] = f"unavailable ({exc})"
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = threadpool_info()
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    info["torch_parallel"] = torch.__config__.parallel_info().splitlines()[:6]
    return info


# ------------------------------------------------------------------------------------- timing


WARM_EACH = True
"""Run every function once, untimed, immediately before each of its timed runs. On the 2-core VM the first
touch of memory the guest has not used lately is very slow (a 353 MB output: ~1 s instead of ~0.05 s),
and which library pays it depends only on the order of the calls (after a call of the other library
freed its buffers, the next allocation lands on cold pages). Warming each call right before timing it
measures the steady state of both libraries alike."""


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Median/min wall and CPU seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if WARM_EACH:
            fn()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return {"wall_median_s": float(np.median(walls)), "wall_min_s": float(min(walls)),
            "cpu_median_s": float(np.median(cpus)), "cpu_min_s": float(min(cpus)), "repeats": repeats}


def timed_side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Like :func:`timed` for several functions, interleaved run by run so that load drifts hit all alike."""
    for fn in fns.values():
        fn()
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if WARM_EACH:
                fn()
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpus[k].append(time.process_time() - c0)
            walls[k].append(time.perf_counter() - w0)
    return {k: {"wall_median_s": float(np.median(walls[k])), "wall_min_s": float(min(walls[k])),
                "cpu_median_s": float(np.median(cpus[k])), "cpu_min_s": float(min(cpus[k])),
                "repeats": repeats} for k in fns}


# ------------------------------------------------------------------------------------- (a) cold start

_ISOTROPIC = "T = 60.0 * np.einsum('ij,kl->ijkl', np.eye(3), np.eye(3)) + 40.0 * (np.einsum('ik,jl->ijkl', np.eye(3), np.eye(3)) + np.einsum('il,jk->ijkl', np.eye(3), np.eye(3)))"
COLD_OURS = f"import numpy as np, irreptensor as it; {_ISOTROPIC}; it.decompose(T, 'elastic')"
COLD_E3NN = (f"import numpy as np, torch; from e3nn.io import CartesianTensor; {_ISOTROPIC}; "
             f"CartesianTensor('{ELASTIC_FORMULA}').from_cartesian(torch.tensor(T))")


def cold_start(repeats: int) -> dict:
    """Wall seconds of fresh interpreter runs (imports included), interleaved ours / e3nn."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    runs = {"ours": [], "e3nn": []}
    for i in range(repeats + 1):  # the first pair warms the OS file cache and is dropped
        for name, code in (("ours", COLD_OURS), ("e3nn", COLD_E3NN)):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd="/",
                           stdout=subprocess.DEVNULL)
            if i:
                runs[name].append(time.perf_counter() - t0)
    res = {k: {"wall_median_s": float(np.median(v)), "wall_min_s": float(min(v)), "runs_s": v}
           for k, v in runs.items()}
    res["speedup"] = res["e3nn"]["wall_median_s"] / res["ours"]["wall_median_s"]
    res["commands"] = {"ours": COLD_OURS, "e3nn": COLD_E3NN}
    return res


# ------------------------------------------------------------------------------------- (b, c, d)


def elastic_data(n: int, seed: int = 0):
    """``n`` random elastic tensors with exact index symmetry (compose of random irreps coordinates)."""
    import irreptensor as it

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 21))
    return x, np.ascontiguousarray(it.compose(x, "elastic"))


def throughput(n: int, repeats: int) -> dict:
    import torch
    from e3nn.io import CartesianTensor

    import irreptensor as it

    x, T = elastic_data(n)
    Tt, xt = torch.from_numpy(T), torch.from_numpy(x)
    ct = CartesianTensor(ELASTIC_FORMULA)
    rtp = ct.reduced_tensor_products()
    Q = it.basis("elastic")
    QT = np.ascontiguousarray(Q.T)
    T2 = T.reshape(n, 81)
    out = {}
    with torch.no_grad():
        out["decompose"] = timed_side_by_side({
            "ours": lambda: it.decompose(T, "elastic"),
            "e3nn": lambda: ct.from_cartesian(Tt, rtp),
            "matmul_floor": lambda: T2 @ QT,
        }, repeats)
        out["compose"] = timed_side_by_side({
            "ours": lambda: it.compose(x, "elastic"),
            "e3nn": lambda: ct.to_cartesian(xt, rtp),
            "matmul_floor": lambda: x @ Q,
        }, repeats)
    for op in ("decompose", "compose"):
        r = out[op]
        r["ours_vs_e3nn"] = r["e3nn"]["wall_median_s"] / r["ours"]["wall_median_s"]
        r["ours_over_floor"] = r["ours"]["wall_median_s"] / r["matmul_floor"]["wall_median_s"]
        r["ours_over_floor_cpu"] = r["ours"]["cpu_median_s"] / r["matmul_floor"]["cpu_median_s"]
    return out


def wigner(n: int, repeats: int) -> dict:
    import torch
    from e3nn import o3

    import irreptensor as it
    from irreptensor._blas import default_threads

    R = it.random_rotation(n, seed=1)
    Rt = torch.from_numpy(R)
    irreps = o3.Irreps(ELASTIC_IRREPS)
    dim = irreps.dim

    def output_floor():
        # what any implementation pays for a fresh result: map the pages and write every entry once
        np.empty((n, dim, dim)).fill(0.0)

    with torch.no_grad():
        res = timed_side_by_side({
            "output_floor": output_floor,
            "ours": lambda: it.wigner_D(R, "elastic"),
            "ours_threads": lambda: it.wigner_D(R, "elastic", threads=None),
            "e3nn": lambda: irreps.D_from_matrix(Rt),
        }, repeats)
        ours, ref = it.wigner_D(R[:20000], "elastic"), irreps.D_from_matrix(Rt[:20000]).numpy()
    res["speedup_wall"] = res["e3nn"]["wall_median_s"] / res["ours"]["wall_median_s"]
    res["speedup_cpu"] = res["e3nn"]["cpu_median_s"] / res["ours"]["cpu_median_s"]
    res["threads"] = default_threads()
    res["speedup_wall_threads"] = res["e3nn"]["wall_median_s"] / res["ours_threads"]["wall_median_s"]
    res["speedup_cpu_threads"] = res["e3nn"]["cpu_median_s"] / res["ours_threads"]["cpu_median_s"]
    res["max_abs_diff_vs_e3nn"] = float(np.abs(ours - ref).max())
    res["dim"] = dim
    return res


def precision(n: int = 2000) -> dict:
    import torch
    from e3nn import o3
    from e3nn.io import CartesianTensor

    import irreptensor as it

    x, T = elastic_data(n, seed=2)
    R = it.random_rotation(n, seed=3)
    ct = CartesianTensor(ELASTIC_FORMULA)
    rtp = ct.reduced_tensor_products()
    Tt, Rt = torch.from_numpy(T), torch.from_numpy(R)
    TR = np.einsum("nai,nbj,nck,ndl,nijkl->nabcd", R, R, R, R, T, optimize=True)
    with torch.no_grad():
        ours_rt = np.abs(it.compose(it.decompose(T, "elastic"), "elastic") - T).max() / np.abs(T).max()
        e3nn_rt = (ct.to_cartesian(ct.from_cartesian(Tt, rtp), rtp) - Tt).abs().max().item() / np.abs(T).max()
        xo = it.decompose(T, "elastic")
        ours_eq = np.abs(it.decompose(TR, "elastic") - np.einsum("nij,nj->ni", it.wigner_D(R, "elastic"), xo)).max()
        xe = ct.from_cartesian(Tt, rtp)
        De = o3.Irreps(ELASTIC_IRREPS).D_from_matrix(Rt)
        e3nn_eq = (ct.from_cartesian(torch.from_numpy(TR), rtp) - torch.einsum("nij,nj->ni", De, xe)).abs().max().item()
    return {
        "n": n,
        "roundtrip_rel_ours": float(ours_rt),
        "roundtrip_rel_e3nn": float(e3nn_rt),
        "equivariance_rel_ours": float(ours_eq / np.abs(xo).max()),
        "equivariance_rel_e3nn": float(e3nn_eq / xe.abs().max().item()),
    }


# ------------------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    ms = lambda r: f"{r['wall_median_s'] * 1e3:.1f}"  # noqa: E731
    cpu = lambda r: f"{r['cpu_median_s'] * 1e3:.1f}" if "cpu_median_s" in r else "-"  # noqa: E731
    rows = ["| benchmark | ours wall ms (cpu ms) | e3nn 0.6 wall ms (cpu ms) | numpy matmul floor wall ms | result | target |",
            "|---|---|---|---|---|---|"]
    if "cold_start" in res:
        c = res["cold_start"]
        ok = "met" if c["speedup"] >= 10 else "NOT met"
        rows.append(f"| (a) cold start: fresh `python -c` import + decompose 1 elastic tensor | {ms(c['ours'])} | "
                    f"{ms(c['e3nn'])} | - | {c['speedup']:.1f}x faster | >= 10x: {ok} |")
    n = res["n"]
    for op in ("decompose", "compose"):
        if op in res:
            r = res[op]
            ok1 = "met" if r["ours_vs_e3nn"] >= 1 else "NOT met"
            ok2 = "met" if r["ours_over_floor"] <= 1.5 else "NOT met"
            rows.append(f"| (b) {op} {n:,} elastic, float64 | {ms(r['ours'])} ({cpu(r['ours'])}) | "
                        f"{ms(r['e3nn'])} ({cpu(r['e3nn'])}) | {ms(r['matmul_floor'])} ({cpu(r['matmul_floor'])}) | "
                        f"{r['ours_vs_e3nn']:.1f}x vs e3nn; {r['ours_over_floor']:.2f}x floor (cpu {r['ours_over_floor_cpu']:.2f}x) | "
                        f">= e3nn: {ok1}; <= 1.5x floor: {ok2} |")
    if "wigner_D" in res:
        r = res["wigner_D"]
        ok = "met" if r["speedup_wall"] >= 50 else "NOT met"
        ok_t = "met" if r["speedup_wall_threads"] >= 50 else "NOT met"
        t = r["threads"]
        rows.append(f"| (c) wigner_D {n:,} rotations, elastic irreps | {ms(r['ours'])} ({cpu(r['ours'])}); "
                    f"threads={t}: {ms(r['ours_threads'])} ({cpu(r['ours_threads'])}) | {ms(r['e3nn'])} ({cpu(r['e3nn'])}) | - | "
                    f"{r['speedup_wall']:.0f}x wall, {r['speedup_cpu']:.0f}x cpu (threads={t}: {r['speedup_wall_threads']:.0f}x wall, "
                    f"{r['speedup_cpu_threads']:.0f}x cpu); max diff vs e3nn {r['max_abs_diff_vs_e3nn']:.1e} | "
                    f">= 50x: {ok} (threads={t}: {ok_t}) |")
        if "output_floor" in r:
            f = r["output_floor"]["wall_median_s"]
            rows.append(f"| (c) floor: allocate and write a fresh {n:,} x {r['dim']} x {r['dim']} float64 output once | {f * 1e3:.1f} | - | - | 50x e3nn = {r['e3nn']['wall_median_s'] / 50 * 1e3:.1f} ms "
                        f"= {r['e3nn']['wall_median_s'] / 50 / f:.2f}x this floor | - |")
    if "precision" in res:
        p = res["precision"]
        rows.append(f"| (d) round trip `compose(decompose(T))`, rel. max error, {p['n']} tensors | {p['roundtrip_rel_ours']:.1e} | "
                    f"{p['roundtrip_rel_e3nn']:.1e} | - | - | - |")
        rows.append(f"| (d) equivariance `decompose(rotate(T,R))` vs `D(R) decompose(T)`, rel. max error | "
                    f"{p['equivariance_rel_ours']:.1e} | {p['equivariance_rel_e3nn']:.1e} | - | - | - |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="tensors / rotations for (b) and (c)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported), >= 5 for the report")
    ap.add_argument("--cold-repeats", type=int, default=5, help="fresh subprocesses per library for (a)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cold", "throughput", "wigner", "precision"])
    ap.add_argument("--json", default="benchmark_core.json", help="where to write the results")
    args = ap.parse_args(argv)

    import torch

    torch.set_default_dtype(torch.float64)
    res: dict = {"machine": machine_info(), "n": args.n, "repeats": args.repeats,
                 "command": " ".join([Path(sys.argv[0]).name if argv is None else "core.py", *(argv or sys.argv[1:])])}
    if "cold" not in args.skip:
        res["cold_start"] = cold_start(args.cold_repeats)
    if "throughput" not in args.skip:
        res.update(throughput(args.n, args.repeats))
    if "wigner" not in args.skip:
        res["wigner_D"] = wigner(args.n, args.repeats)
    if "precision" not in args.skip:
        res["precision"] = precision()
    m = res["machine"]
    print(f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores; numpy {m['numpy']} "
          f"({(m['numpy_blas'] or {}).get('name') if isinstance(m['numpy_blas'], dict) else m['numpy_blas']}), "
          f"torch {m['torch']} ({m['torch_threads']} threads), e3nn {m['e3nn']}\n")
    print(markdown(res))
    Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return res


if __name__ == "__main__":
    main()
