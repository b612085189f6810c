#!/bin/bash
# The full transfer study on one GPU machine that has torch/e3nn/lightning but no pymatgen.
#
#   irreptensor-ml transfer --preset full --export-cache full.pt      # here, with pymatgen (10 s)
#   CACHE=full.pt OUT=/tmp/out WORKERS=15 DEADLINE_S=560 bash scripts/run_full_study_gpu.sh   # GPU machine
#
# 1. a smoke run (every strategy, 3 batches, on the GPU) that stops the script early if the CUDA path breaks;
# 2. the study itself, stopped if unfinished so that the script ends within DEADLINE_S seconds (finished runs are stored; rerunning
#    this script with the returned runs unpacked into RESULTS resumes it);
# 3. the report and the exported models (--export-models) when every run finished;
# Options: SMOKE=0 skips step 1; RESUME=DIR unpacks DIR/runs.tgz and DIR/models.tgz (a previous call's
# archives) into RESULTS first; MPS=1 starts CUDA MPS so the workers' kernels share the GPU concurrently
# (default; falls back to plain time-slicing if MPS does not start; MPS=0 to skip).
# PRESET=foundation runs the foundation study instead (default full); it needs the foundation extra:
# WHEELS=DIR installs the wheels of scripts/foundation_wheels.py from DIR first (into /tmp/site).
# 4. $OUT gets: env.txt, times.txt, gpu_util.txt (every 10 s), study.log, runs.tgz (records + test predictions + report),
#    models.tgz (the models trained on all training data: pretraining + fraction 1, every seed).
set -u
OUT=${OUT:-/tmp/full_out}; mkdir -p "$OUT"
CACHE=${CACHE:-full.pt}
R=${RESULTS:-/tmp/transfer_full}
W=${WORKERS:-15}
DEADLINE_S=${DEADLINE_S:-560}   # the whole script, smoke and report included
START=$(date +%s)
EXTRA=${EXTRA:-}              # more --set options (tests of this script)
export PYTHONUNBUFFERED=1
PRESET=${PRESET:-full}
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || exit 5
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the smoke run and the study share the foundation trunk's feature cache (computed once, not archived)
mkdir -p "$R/features" /tmp/smoke && ln -sfn "$R/features" /tmp/smoke/features
STUDY="python -m irreptensor_ml.transfer --preset $PRESET --from-cache $CACHE --set train.trainer.num_threads=1 $EXTRA"
{ nvidia-smi -L; nproc; python -c "import pymatgen" 2>&1 | tail -1
  python -c "import torch, e3nn, lightning; print(torch.__version__, e3nn.__version__, lightning.__version__, torch.cuda.is_available())"
  python -c "import sevenn; print('sevenn', sevenn.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1

if [ -n "${RESUME:-}" ]; then
  mkdir -p "$R" && for f in "$RESUME"/runs.tgz "$RESUME"/models.tgz; do tar xzf "$f" -C "$R" || exit 4; done
  echo "resumed: $(ls "$R"/runs | wc -l) stored runs" >> "$OUT/times.txt"
fi
if [ "${MPS:-1}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p /tmp/mps_pipe /tmp/mps_log
  if nvidia-cuda-mps-control -d && timeout 30 python -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "mps on" >> "$OUT/times.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "mps failed to start; plain time-slicing" >> "$OUT/times.txt"
  fi
fi

if [ "${SMOKE:-1}" = 1 ]; then
  t0=$(date +%s)
  # the foundation smoke run also computes the trunk features of every crystal (kept for the study)
  [ "$PRESET" = full ] && SMOKE_DEFAULT=100 || SMOKE_DEFAULT=300
  timeout "${SMOKE_S:-$SMOKE_DEFAULT}" $STUDY --results-dir /tmp/smoke --workers "${SMOKE_W:-10}" --set seeds=[0] \
    --set fractions=[1.0] --set 'tuning.candidates={}' --set train.trainer.max_epochs=1 \
    --set train.trainer.limit_train_batches=3 --set 'pretrain.overrides={"trainer.max_epochs":1}' \
    --set min_train_steps=0 --set train.trainer.limit_val_batches=1 > "$OUT/smoke.log" 2>&1
  rc=$?
  echo "smoke rc=$rc s=$(( $(date +%s) - t0 ))" >> "$OUT/times.txt"
  if [ $rc -ne 0 ]; then tar czf "$OUT/smoke.tgz" -C /tmp smoke 2>/dev/null; exit 3; fi
fi

t0=$(date +%s)
BUDGET_S=$(( DEADLINE_S - ($(date +%s) - START) - 25 ))   # 25 s kept for the archives
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu_util.txt" 2>&1 &
echo "study budget ${BUDGET_S} s" >> "$OUT/times.txt"
timeout --signal=INT --kill-after=15 "$BUDGET_S" $STUDY --results-dir "$R" --workers "$W" --export-models "$R/export" \
  > "$OUT/study.log" 2>&1
rc=$?
echo "study rc=$rc s=$(( $(date +%s) - t0 ))" >> "$OUT/times.txt"
kill %1 2>/dev/null
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
tar czf "$OUT/runs.tgz" -C "$R" --exclude=models --exclude=export --exclude='*.pt' . 2>/dev/null
(cd "$R" && tar czf "$OUT/models.tgz" $(ls models/pretrain-*.pt models/*-f1-s*.pt 2>/dev/null) $(ls -d export 2>/dev/null))
ls -la "$OUT" >> "$OUT/times.txt"
