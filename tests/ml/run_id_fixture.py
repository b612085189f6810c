"""A small synthetic study data set and the run ids a study config plans on it.

Shared by ``test_transfer_run_ids.py`` and the one-off script that generated its regression
fixture from the committed code (HEAD 2ff32ce, before the foundation strategies): the graphs are
hand-made tensors (no pymatgen, no neighbour search), so the data fingerprint -- part of every run
id -- is the same on every machine.  Uses only APIs that existed at that commit.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

PROPS = ("elastic", "dielectric", "piezoelectric")
IRREPS = {"elastic": "2x0e+2x2e+1x4e", "dielectric": "1x0e+1x2e", "piezoelectric": "2x1o+1x2o+1x3o"}
DIMS = {"elastic": 21, "dielectric": 6, "piezoelectric": 18}
#: a trunk small enough for micro studies on the synthetic data (seconds per run)
TINY_TRUNK = {
    "embedding_dim": 4, "irreps_hidden": "4x0e+2x1o+2x2e+1x2o+1x3o+1x4e", "num_layers": 2,
    "lmax_sh": 2, "num_basis": 4, "radial_hidden": [4], "avg_num_neighbors": 2.0,
}


def synthetic_study_data(config: Mapping[str, Any]) -> Any:
    """30 one-to-three-atom "crystals" on all split sides, each with one to three properties."""
    from irreptensor_ml.data.datamodule import DataConfig
    from irreptensor_ml.data.graphs import CrystalGraph
    from irreptensor_ml.transfer.studydata import StudyData

    graphs, targets, keys, sides, uids = [], [], [], [], []
    for k in range(30):
        n = 1 + k % 3
        species = torch.tensor([(3 + 5 * k + 7 * i) % 80 + 1 for i in range(n)], dtype=torch.long)
        pos = torch.tensor([[0.5 * i + 0.01 * k, 0.25 * i, 0.1 * i] for i in range(n)], dtype=torch.float64)
        lattice = torch.eye(3, dtype=torch.float64) * (3.0 + 0.05 * k)
        src = [i for i in range(n) for _ in range(2)]
        edge_index = torch.tensor([src, [(i + 1) % n for i in src]], dtype=torch.long)
        shift = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]] * n, dtype=torch.float64) * lattice[0, 0]
        mid = f"syn-{k}"
        graphs.append(CrystalGraph(species, pos, lattice, edge_index, shift, mid))
        has = [p for j, p in enumerate(PROPS) if (k + j) % 3 != 2 or j == 0]
        targets.append({p: torch.linspace(-1, 1, DIMS[p], dtype=torch.float64) * (k + 1) for p in has})
        keys.append(mid)
        sides.append(("train", "train", "train", "train", "val", "test")[k % 6])
        uids.append([f"{p}_syn.jsonl.gz:{mid}" for p in has])
    data_config = DataConfig.from_dict(
        {**dict(config["data"]), "properties": list(PROPS), "train_fraction": 1.0}
    ).to_dict()
    return StudyData(graphs, targets, keys, sides, uids, dict(IRREPS), data_config)


def planned_run_ids(config: Mapping[str, Any], data: Any) -> list[str]:
    """Every run id the study can plan: pretraining, tuning, and the final runs for every choice
    of tuning candidate (candidate k of all strategies, k = 0 .. max - 1), sorted."""
    from irreptensor_ml.transfer import plan

    pretrain = plan.plan_pretrain(config, data)
    ids = {s.run_id for s in pretrain.values()}
    ids |= {s.run_id for s in plan.plan_trials(config, data, pretrain)}
    n = max(len(plan.candidates(config, s)) for s in config["strategies"])
    for k in range(n):
        selection = {
            t: {s: {"chosen": min(k, len(plan.candidates(config, s)) - 1)} for s in config["strategies"]}
            for t in config["targets"]
        }
        ids |= {s.run_id for s in plan.plan_runs(config, data, pretrain, selection)}
    return sorted(ids)
