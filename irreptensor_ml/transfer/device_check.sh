#!/bin/bash
# Device check of the transfer study: times 3-epoch runs of the full preset with 1 and $W (default 8)
# concurrent workers from an exported cache, on a machine without pymatgen. Run from the repo root:
#   CACHE=full_data.pt OUT=/tmp/out W=8 bash irreptensor_ml/transfer/device_check.sh
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
C=${CACHE:-full_data.pt}
R=$OUT/r
EXTRA=${EXTRA:-}
{ nvidia-smi -L; nproc; python -c "import pymatgen" 2>&1 | tail -1
  python -c "import torch, e3nn, lightning; print(torch.__version__, e3nn.__version__, lightning.__version__, torch.cuda.is_available())"
  python -c "import matplotlib; print('matplotlib', matplotlib.__version__)" 2>&1 | tail -1; } > "$OUT/env.txt" 2>&1
COMMON="--preset full --from-cache $C --results-dir $R --set seeds=[0] --set fractions=[1.0] --set tuning.candidates={} --set train.trainer.max_epochs=3 --set train.trainer.early_stopping_patience=3 --set pretrain.overrides={\"trainer.max_epochs\":3} --set min_train_steps=0 $EXTRA"
t0=$(date +%s.%N)
python -m irreptensor_ml.transfer $COMMON --workers 1 --set strategies=[scratch] --set targets=[dielectric] > "$OUT/run1.log" 2>&1
echo "run1 rc=$? s=$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/times.txt"
t0=$(date +%s.%N)
python -m irreptensor_ml.transfer $COMMON --workers ${W:-8} --set strategies=[scratch,frozen,finetune,multitask,control] --set targets=[dielectric,piezoelectric] > "$OUT/run2.log" 2>&1
echo "run2 rc=$? s=$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/times.txt"
python - "$R" > "$OUT/runs_table.txt" 2>&1 <<'PY'
import json, glob, sys
for f in sorted(glob.glob(sys.argv[1] + "/runs/*.json")):
    r = json.load(open(f)); t = r["train"]
    print(f"{r['run_id'][:40]:40s} {r['device'][:30]:30s} wall={r['wall_time_s']:7.1f}s epochs={t['epochs_run']} "
          f"ntrain={t['n_train_samples']} s/epoch={r['wall_time_s'] / max(1, t['epochs_run']):.2f} "
          f"val_frob={r['val']['frobenius_mae']:.4g} test={r.get('test', {}).get('frobenius_mae')}")
PY
rm -rf "$R/models"
