"""Benchmark of the tensor predictor: training throughput, inference time, peak memory, size.

Measured per device (``cpu`` and ``cuda`` when available):

* ``train_structures_per_s`` -- structures per second of full optimisation steps
  (forward + MSE loss on normalized irreps + backward + Adam step), after warm-up steps;
* ``infer_ms_per_structure`` -- wall time per structure of batched ``torch.no_grad`` forward
  passes (batch size ``--batch-size``), and ``infer_ms_single`` for batch size 1;
* ``peak_mem_mb`` -- CUDA: ``torch.cuda.max_memory_allocated`` over the device's runs (tensors
  only); CPU: the process' peak resident set size from ``resource.getrusage`` (``ru_maxrss``,
  whole process including Python, libraries and data -- an upper bound, monotone over the run);
* ``n_params`` -- trainable parameters.

Data: the real elastic records (``irreptensor_ml.data.records.load_records``, first
``--n-structures`` valid ones, radius graphs from ``irreptensor_ml.data.graphs``). A machine without
pymatgen can run the benchmark from a preprocessed file: write it once with
``--export-graphs FILE`` (needs pymatgen), then use ``--graphs FILE`` (needs only torch, e3nn and
irreptensor). The file is a ``torch.save`` of plain tensors/strings (``weights_only`` loadable).

Examples::

    python benchmarks/ml.py --n-structures 32 --device cpu --json bench.json
    python benchmarks/ml.py --n-structures 256 --export-graphs elastic_graphs.pt
    python benchmarks/ml.py --graphs elastic_graphs.pt --device cuda

Prints a Markdown table and writes JSON (``--json``, default ``benchmark_ml.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

# Run from a source checkout without installing: make the repository root importable.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path and (_REPO / "irreptensor_ml").is_dir():
    sys.path.insert(0, str(_REPO))

GRAPH_FILE_FORMAT = "irreptensor-ml-graphs/1"



# ------------------------------------------------------------------------------------- data


def build_samples(
    property: str, n_structures: int, cutoff: float, sources: Sequence[str] = ("mp",)
) -> list[dict[str, Any]]:
    """First ``n_structures`` valid records of ``property`` as plain-dict graph samples.

    Each sample: ``species, pos, lattice, edge_index, edge_shift`` (as in ``CrystalGraph``),
    ``material_id`` and ``target`` (``(dim,)`` float64 irreps, physical units). Needs pymatgen.
    """
    import numpy as np

    import irreptensor as it
    from irreptensor_ml.data.graphs import structure_to_graph
    from irreptensor_ml.data.records import load_records

    records = load_records(property, sources, check_symmetry=False)[:n_structures]
    if not records:
        raise ValueError(f"no records for property {property!r} and sources {list(sources)}")
    samples = []
    for r in records:
        g = structure_to_graph(r.structure, cutoff=cutoff)
        x = np.asarray(it.decompose(np.asarray(r.tensor, dtype=np.float64), property))
        samples.append({
            "species": g.species, "pos": g.pos, "lattice": g.lattice,
            "edge_index": g.edge_index, "edge_shift": g.edge_shift,
            "material_id": r.material_id,
            "target": torch.as_tensor(x, dtype=torch.float64).reshape(-1),
        })
    return samples


def export_graphs(
    path: Path, samples: list[dict[str, Any]], property: str, config: dict[str, Any]
) -> Path:
    """``torch.save`` the samples with their property and the resolved training config (whose
    ``data.cutoff`` the graphs were built with) to ``path``."""
    import irreptensor as it

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": GRAPH_FILE_FORMAT, "property": property, "irreps": str(it.irreps(property)),
        "cutoff": float(config["data"]["cutoff"]), "config": config, "samples": samples,
    }, path)
    return path


def load_graphs(path: Path) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """Read a file written by :func:`export_graphs` -> ``(samples, property, config)``."""
    if not path.is_file():
        raise FileNotFoundError(f"graph file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != GRAPH_FILE_FORMAT:
        raise ValueError(f"{path} is not a graph file written by --export-graphs ({GRAPH_FILE_FORMAT})")
    return list(data["samples"]), str(data["property"]), dict(data["config"])


def make_batches(samples: list[dict[str, Any]], property: str, batch_size: int) -> list[Any]:
    """Collate samples into :class:`~irreptensor_ml.data.batch.Batch` objects (float64, CPU)."""
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import CrystalGraph

    graphs = [
        (CrystalGraph(s["species"], s["pos"], s["lattice"], s["edge_index"], s["edge_shift"],
                      s["material_id"]), {property: s["target"]})
        for s in samples
    ]
    return [collate(graphs[i:i + batch_size]) for i in range(0, len(graphs), batch_size)]


# ------------------------------------------------------------------------------------ model


def build_model(config: dict[str, Any], property: str) -> torch.nn.Module:
    """``TensorPredictor`` as a training run builds it from the config's ``model`` section, with
    one head for ``property``; the trunk cutoff is ``data.cutoff`` (the graph cutoff)."""
    from irreptensor_ml.model import TensorPredictor

    model_cfg = config["model"]
    trunk = {**dict(model_cfg.get("trunk") or {}), "cutoff": float(config["data"]["cutoff"])}
    head = dict((model_cfg.get("heads") or {}).get(property) or {})
    return TensorPredictor(trunk=trunk, heads={property: head or None})


# -------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def benchmark_device(
    device_name: str,
    batches_cpu: list[Any],
    property: str,
    config: dict[str, Any],
    *,
    steps: int,
    warmup: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train/inference timings and memory on one device (see module doc for the fields)."""
    from irreptensor_ml.data.normalization import IrrepNormalizer

    import irreptensor as it

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = build_model(config, property).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    normalizer = IrrepNormalizer().fit(
        torch.cat([b.targets[property] for b in batches_cpu]), str(it.irreps(property))
    )
    batches = [b.to(device, dtype) for b in batches_cpu]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(batch: Any) -> float:
        opt.zero_grad(set_to_none=True)
        pred = model(batch)[property]
        loss = torch.nn.functional.mse_loss(pred, normalizer.normalize(batch.targets[property]))
        loss.backward()
        opt.step()
        return float(loss.detach())

    model.train()
    for k in range(warmup):
        train_step(batches[k % len(batches)])
    _sync(device)
    n_struct = 0
    t0 = time.perf_counter()
    for k in range(steps):
        b = batches[k % len(batches)]
        train_step(b)
        n_struct += b.num_graphs
    _sync(device)
    train_time = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        model(batches[0])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        n_inf = 0
        for b in batches:
            model(b)
            n_inf += b.num_graphs
        _sync(device)
        infer_time = time.perf_counter() - t0
        singles = [b for b in make_single(batches_cpu, device, dtype)][: min(16, n_inf)]
        model(singles[0])
        _sync(device)
        t0 = time.perf_counter()
        for b in singles:
            model(b)
        _sync(device)
        single_time = time.perf_counter() - t0

    peak = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else _peak_rss_mb()
    return {
        "device": device_name,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(dtype).replace("torch.", ""),
        "n_params": int(n_params),
        "train_steps": steps,
        "train_structures_per_s": n_struct / train_time,
        "infer_ms_per_structure": 1e3 * infer_time / n_inf,
        "infer_ms_single": 1e3 * single_time / len(singles),
        "peak_mem_mb": peak,
        "peak_mem_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def make_single(batches_cpu: list[Any], device: torch.device, dtype: torch.dtype) -> list[Any]:
    """Batches of one structure each (for single-structure latency), rebuilt from ``batches_cpu``."""
    from irreptensor_ml.data.batch import collate
    from irreptensor_ml.data.graphs import CrystalGraph

    out = []
    for b in batches_cpu:
        for g in range(b.num_graphs):
            nodes = (b.batch == g).nonzero().flatten()
            lo, hi = int(nodes.min()), int(nodes.max()) + 1
            emask = (b.edge_index[0] >= lo) & (b.edge_index[0] < hi)
            graph = CrystalGraph(
                b.species[lo:hi], b.pos[lo:hi], b.lattice[g],
                b.edge_index[:, emask] - lo, b.edge_shift[emask], b.material_ids[g],
            )
            out.append(collate([(graph, {})]).to(device, dtype))
            if len(out) >= 16:
                return out
    return out


# ------------------------------------------------------------------------------------- main


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`benchmark_device` results."""
    head = ("| device | params | train [struct/s] | infer [ms/struct] | infer batch=1 [ms] | "
            "peak mem [MiB] |")
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['device']} ({r['device_name']}) | {r['n_params']:,} | "
            f"{r['train_structures_per_s']:.1f} | {r['infer_ms_per_structure']:.2f} | "
            f"{r['infer_ms_single']:.2f} | {r['peak_mem_mb']:.0f} ({r['peak_mem_kind']}) |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, or comma list; auto = cpu plus cuda when available")
    p.add_argument("--n-structures", type=int, default=32, help="structures to load (default 32)")
    p.add_argument("--config", default=None,
                   help="training YAML config merged over configs/default.yaml (its model section and "
                        "data.cutoff are used; default: default.yaml, or the config stored in --graphs)")
    p.add_argument("--property", default="elastic", help="property (default elastic)")
    p.add_argument("--sources", default="mp", help="comma list of data sources (default mp)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--graphs", default=None, help="load preprocessed graphs (no pymatgen needed)")
    p.add_argument("--export-graphs", default=None, help="write preprocessed graphs to FILE and exit")
    p.add_argument("--json", default="benchmark_ml.json", help="JSON output file")
    args = p.parse_args(argv)
    for name in ("n_structures", "batch_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.graphs:
        samples, prop, config = load_graphs(Path(args.graphs))
        samples = samples[: args.n_structures]
        if args.config:  # another model on the same graphs: the cutoff must agree
            from irreptensor_ml.train.config import load_config

            new = load_config(args.config)
            if float(new["data"]["cutoff"]) != float(config["data"]["cutoff"]):
                raise SystemExit(
                    f"error: --config data.cutoff={new['data']['cutoff']} differs from the cutoff "
                    f"{config['data']['cutoff']} of the graphs in {args.graphs}"
                )
            config = new
    else:
        from irreptensor_ml.train.config import load_config

        config = load_config(args.config)
        prop = args.property
        samples = build_samples(prop, args.n_structures, float(config["data"]["cutoff"]),
                                args.sources.split(","))
    cutoff = float(config["data"]["cutoff"])
    if args.export_graphs:
        path = export_graphs(Path(args.export_graphs), samples, prop, config)
        print(f"wrote {len(samples)} {prop} graphs (cutoff {cutoff} A) to {path}")
        return 0

    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.device.split(",") if d.strip()]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"error: --device {d}: CUDA is not available on this machine")
    batches = make_batches(samples, prop, args.batch_size)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    rows = [
        benchmark_device(d, batches, prop, config, steps=args.steps, warmup=args.warmup, dtype=dtype)
        for d in devices
    ]
    n_atoms = [int(s["species"].numel()) for s in samples]
    meta = {
        "property": prop, "n_structures": len(samples), "batch_size": args.batch_size,
        "cutoff": cutoff, "mean_atoms": sum(n_atoms) / len(n_atoms),
        "mean_edges": sum(int(s["edge_index"].shape[1]) for s in samples) / len(samples),
        "torch": torch.__version__, "threads": args.threads,
        "config": args.config or ("stored in " + args.graphs if args.graphs else "default.yaml"),
        "model": config["model"],
    }
    print(f"{prop}: {len(samples)} structures, mean {meta['mean_atoms']:.1f} atoms, "
          f"{meta['mean_edges']:.0f} edges, batch {args.batch_size}, {args.threads} CPU thread(s)\n")
    print(markdown_table(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
