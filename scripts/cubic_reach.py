"""How many elastic labels can a trunk reach at all in their ``4e`` block (the cubic anisotropy)?

A trunk with random weights is run on each MP elastic structure; a label whose ``4e`` block is
larger than 1 GPa but whose predicted ``4e`` block is exactly zero (< 1e-9) cannot be learned by
any training of that trunk.  At a site of cubic symmetry every ``l = 1, 2, 3`` feature vanishes, so
this counts the crystals that need ``l = 4`` edge harmonics (``lmax_sh``).

    python scripts/cubic_reach.py --lmax-sh 2 3 4
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    import irreptensor
    from irreptensor_ml.data import collate, structure_to_graph
    from irreptensor_ml.data.records import load_records
    from irreptensor_ml.model import EquivariantTrunk, TensorHead

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lmax-sh", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--cutoff", type=float, default=4.0)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    records = load_records("elastic", "mp")
    graphs = [collate([(structure_to_graph(r.structure, args.cutoff), {})]).to(torch.float64) for r in records]
    label_4e = np.linalg.norm(np.asarray(irreptensor.decompose(
        np.stack([r.tensor for r in records]), kind="elastic", symmetrize_indices=True))[:, -9:], axis=1)
    anisotropic = label_4e > 1.0
    for lmax_sh in args.lmax_sh:
        trunk = EquivariantTrunk(embedding_dim=16, irreps_hidden="16x0e+4x1o+4x2e+2x2o+2x3o+2x4e", num_layers=2,
                                 lmax_sh=lmax_sh, message_lmax=2, cutoff=args.cutoff,
                                 avg_num_neighbors=15.0).double()
        head = TensorHead(trunk.irreps_out, "2x0e+2x2e+1x4e").double()
        with torch.no_grad():
            pred_4e = np.array([head(trunk(b), b.batch, 1)[0, -9:].norm().item() for b in graphs])
        lost = anisotropic & (pred_4e < 1e-9)
        names = [records[i].structure.composition.reduced_formula for i in np.flatnonzero(lost)]
        print(f"lmax_sh={lmax_sh}: 4e block unreachable for {lost.sum()} of {anisotropic.sum()} labels "
              f"with |4e| > 1 GPa", names[:10])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
