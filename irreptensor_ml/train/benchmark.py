"""Measure the training cost of a configuration on real batches.

``python -m irreptensor_ml.train.benchmark [CONFIG] [--batches N] [--threads T] [key=value ...]``
builds the data module and the model of CONFIG (default: the shipped ``default.yaml``), runs
``N`` optimisation steps (forward + loss + backward + AdamW step) on training batches after one
warm-up step, and prints a JSON summary: parameter counts, mean neighbours per atom, seconds per
structure (median over batches, normalised by each batch's size) and the projected time of one
epoch over the training split.  Use it to check that a model size fits the compute budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Mapping, Sequence

import torch

from irreptensor_ml.data.datamodule import TensorDataModule
from irreptensor_ml.train.config import load_config
from irreptensor_ml.train.module import TensorLightningModule

__all__ = ["benchmark"]


def benchmark(
    config: Mapping[str, Any] | str | None = None,
    overrides: Sequence[str] = (),
    num_batches: int = 10,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time ``num_batches`` training steps of ``config`` on ``device``; returns a summary dict.

    Keys: ``num_parameters``, ``num_trunk_parameters``, ``mean_neighbors``, ``mean_atoms``,
    ``seconds_per_structure`` (median wall time of a training step / batch size),
    ``cpu_seconds_per_structure`` (same with process CPU time: with one thread this is the
    cost without interference from other processes), ``forward_seconds_per_structure``
    (median, no grad),
    ``train_structures``, ``projected_epoch_seconds``, ``device``, ``torch_threads``.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    cfg = load_config(config, overrides)
    torch.manual_seed(int(cfg["seed"]))
    dm = TensorDataModule(cfg["data"])
    dm.setup("fit")
    module = TensorLightningModule(
        dm.irreps, cfg["model"], cfg["loss"], cfg["optim"], max_epochs=cfg["trainer"]["max_epochs"],
        train_targets={p: dm.train_dataset.targets(p) for p in dm.irreps},
    ).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(cfg["optim"]["lr"]))
    loader = dm.train_dataloader()
    per_structure: list[float] = []
    cpu_per_structure: list[float] = []
    forward_only: list[float] = []
    atoms = edges = graphs = 0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    batches = iter(loader)
    for step in range(num_batches + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = batch.to(device)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = module._shared_step(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            module(batch)
        sync()
        t2 = time.perf_counter()
        if step == 0:  # warm-up (allocator, lazy initialisation)
            continue
        per_structure.append((t1 - t0) / batch.num_graphs)
        cpu_per_structure.append((c1 - c0) / batch.num_graphs)
        forward_only.append((t2 - t1) / batch.num_graphs)
        atoms += int(batch.species.shape[0])
        edges += int(batch.edge_index.shape[1])
        graphs += int(batch.num_graphs)
    n_train = len(dm.train_dataset)
    sec = statistics.median(per_structure)
    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "num_parameters": sum(p.numel() for p in module.model.parameters()),
        "num_trunk_parameters": sum(p.numel() for p in module.model.trunk.parameters()),
        "mean_atoms": atoms / graphs,
        "mean_neighbors": edges / atoms,
        "seconds_per_structure": sec,
        "cpu_seconds_per_structure": statistics.median(cpu_per_structure),
        "forward_seconds_per_structure": statistics.median(forward_only),
        "train_structures": n_train,
        "projected_epoch_seconds": sec * n_train,
        "properties": list(dm.irreps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irreptensor_ml.train.benchmark", description=__doc__)
    parser.add_argument("config", nargs="?", default=None, help="YAML path or shipped name")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(benchmark(args.config, args.overrides, args.batches, args.device), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
