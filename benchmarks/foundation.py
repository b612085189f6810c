"""Cost of the foundation trunk (SevenNet-0) on this machine: feature extraction and training.

Measured on the first ``--n-structures`` elastic records of the Materials Project file (radius
graphs at 5 Angstrom, SevenNet-0's cutoff), per crystal:

* ``extract_ms_per_structure`` -- :func:`irreptensor_ml.foundation.extract_node_features`
  (no gradients, batches of ``--extract-batch``; parity symmetrised, i.e. the crystal and its
  inverted copy in one pass) -- the one-off cost of the ``foundation-frozen`` feature cache;
* ``train_ms_per_structure`` for three set-ups, each a full optimisation step (forward, MSE loss
  on the elastic irreps, backward, AdamW step) in batches of ``--batch-size`` after warm-up:

  - ``frozen_cached``: the tensor-product head on cached trunk features (what a
    ``foundation-frozen`` run does every step);
  - ``finetune``: SevenNet-0 trunk (trainable) + tensor-product head (``foundation-finetune``);
  - ``scratch_full``: our trunk of the ``full`` preset + linear head (the ``scratch`` baseline).

Needs the ``foundation`` extra and pymatgen.  Example::

    python benchmarks/foundation.py --n-structures 48 --threads 1 --json results/benchmarks/foundation_cpu.json

Prints a Markdown table and writes JSON (machine, load average, versions, settings, numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path and (_REPO / "irreptensor_ml").is_dir():
    sys.path.insert(0, str(_REPO))


def machine() -> dict[str, Any]:
    from irreptensor_ml.train.provenance import cpu_model

    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_start": list(os.getloadavg())}


def samples(n: int) -> list[tuple[Any, dict[str, torch.Tensor]]]:
    import numpy as np

    import irreptensor as it
    from irreptensor_ml.data.graphs import structure_to_graph
    from irreptensor_ml.data.records import load_records

    out = []
    for r in load_records("elastic", ["mp"], check_symmetry=False)[:n]:
        g = structure_to_graph(r.structure, cutoff=5.0)
        y = torch.as_tensor(np.asarray(it.decompose(np.asarray(r.tensor, dtype=np.float64), "elastic")))
        out.append((g, {"elastic": (y / 100.0).float()}))  # ~unit scale, like normalized targets
    return out


def time_steps(step, batches: list[Any], warmup: int, repeat: int) -> float:
    """Median over ``repeat`` passes of the wall seconds of one pass over ``batches``."""
    for b in batches[:warmup]:
        step(b)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for b in batches:
            step(b)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-structures", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--extract-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmark_foundation.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_meta = machine()  # the load average before the measurement

    import irreptensor as it
    from irreptensor_ml.data import collate
    from irreptensor_ml.foundation import CachedFeatureTrunk, extract_node_features
    from irreptensor_ml.model import TensorPredictor
    from irreptensor_ml.transfer.presets import load_study_config

    data = samples(args.n_structures)
    graphs = [g for g, _ in data]
    for k, g in enumerate(graphs):
        g.material_id = f"s{k}"
    batches = [collate(data[i:i + args.batch_size]).to(dtype=torch.float32)
               for i in range(0, len(data), args.batch_size)]
    n_atoms = sum(g.num_nodes for g in graphs)
    head = {"elastic": {"irreps_out": it.irreps("elastic"), "type": "tensor_product", "mul_square": 8}}
    results: dict[str, Any] = {}

    torch.manual_seed(0)
    foundation = TensorPredictor({"foundation": "7net-0", "cutoff": 5.0}, head)
    start = time.perf_counter()
    features = extract_node_features(foundation.trunk, graphs, batch_size=args.extract_batch, progress=False)
    results["extract_ms_per_structure"] = 1e3 * (time.perf_counter() - start) / len(graphs)

    def trainer(model):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)

        def step(batch):
            opt.zero_grad(set_to_none=True)
            loss = (model(batch)["elastic"] - batch.targets["elastic"]).pow(2).mean()
            loss.backward()
            opt.step()
        return step, sum(p.numel() for p in params)

    real_trunk = foundation.trunk
    foundation.trunk = CachedFeatureTrunk(features, {g.material_id: k for k, g in enumerate(graphs)},
                                          real_trunk.irreps_out, real_trunk.config)
    step, n_params = trainer(foundation)
    results["frozen_cached"] = {"seconds": time_steps(step, batches, 1, args.repeat), "trainable": n_params}
    foundation.trunk = real_trunk
    foundation.freeze_trunk(False)
    step, n_params = trainer(foundation)
    results["finetune"] = {"seconds": time_steps(step, batches, 1, max(1, args.repeat - 2)), "trainable": n_params}
    full_trunk = dict(load_study_config("full")["train"]["model"]["trunk"], cutoff=5.0)
    scratch = TensorPredictor(full_trunk, {"elastic": it.irreps("elastic")})
    step, n_params = trainer(scratch)
    results["scratch_full"] = {"seconds": time_steps(step, batches, 1, args.repeat), "trainable": n_params}
    for key in ("frozen_cached", "finetune", "scratch_full"):
        results[key]["train_ms_per_structure"] = 1e3 * results[key]["seconds"] / len(graphs)

    meta = {**start_meta, "load_average_end": list(os.getloadavg()), "threads": args.threads,
            "n_structures": len(graphs), "mean_atoms": n_atoms / len(graphs), "batch_size": args.batch_size,
            "extract_batch": args.extract_batch, "feature_irreps": str(real_trunk.irreps_out)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"Machine: {meta['cpu_model']}, {meta['logical_cores']} logical cores, torch {meta['torch']}, "
          f"{args.threads} thread(s); load average {meta['load_average_start'][0]:.1f} -> "
          f"{meta['load_average_end'][0]:.1f}; {len(graphs)} elastic MP crystals, "
          f"{meta['mean_atoms']:.1f} atoms on average, batch {args.batch_size}")
    print("\n| step | ms per crystal | trainable parameters |\n|---|---|---|")
    print(f"| feature extraction (SevenNet-0, no grad, parity symmetrised) | "
          f"{results['extract_ms_per_structure']:.1f} | - |")
    names = {"frozen_cached": "foundation-frozen: head on cached features",
             "finetune": "foundation-finetune: SevenNet-0 trunk + head",
             "scratch_full": "scratch: our trunk (full preset) + linear head"}
    for key, name in names.items():
        print(f"| {name} | {results[key]['train_ms_per_structure']:.1f} | {results[key]['trainable']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
