#!/usr/bin/env bash
# The GPU figures of steps 1 and 2 in one short run on a CUDA machine (about 6-8 minutes on one
# H200; each part time-boxed, so a slow part cannot starve the next). Run from the repository
# root: `benchmarks/gpu_check.sh [OUTDIR]`. Uses $PYTHON (default: .venv/bin/python if present,
# else python3) with the repository on PYTHONPATH, so an image that already has torch, numpy,
# pyarrow, scipy, scikit-image and pyyaml needs no install. Each part writes its log and its last
# line, one JSON object, to OUTDIR (default $OUT, else ./gpu-check):
#   training.json   the paper encoder's images/s in float32 and bf16, fraction of bf16 peak
#   transfers.json  transfers per minute, fused + cached against the naive ways, on the GPU
#   memory.json     paper-scale chunks' allocator peaks against taskonomy_ray.memory's estimate
#   sweep.json      the smoke sweep with half a GPU per feature and transfer unit, end to end
#                   (needs ray; the last part, so it cannot starve the figures above)
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

part() {  # part NAME SECONDS ARGS...: run one benchmark, keep its log and its JSON line
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  timeout "$limit" "$py" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 1 "$out/$name.log" > "$out/$name.json"
  "$py" -c 'import json, sys; json.load(open(sys.argv[1]))' "$out/$name.json" 2>/dev/null \
    || echo "   NOT A RESULT: the last line of $name.log is not JSON (failed or timed out)"
  echo "   exit $rc; $(wc -c < "$out/$name.log") bytes of log"
  tail -n 3 "$out/$name.log" | cut -c1-400
}

"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())' || exit 1
part training 120 benchmarks/bench_training.py --gpu-only
# the rendered 256 px set stays out of OUTDIR (a device run brings back a few files only), and
# is rendered outside the transfers' time box
data256="${TMPDIR:-/tmp}/taskonomy-gpu-check-256"
part render 120 benchmarks/bench_transfers.py --scale gpu --render-only --data "$data256"
part transfers 330 benchmarks/bench_transfers.py --scale gpu --device cuda --data "$data256"
part memory 60 benchmarks/bench_memory.py --device cuda
if "$py" -c 'import ray' 2>/dev/null; then
  work="${TMPDIR:-/tmp}/taskonomy-gpu-sweep"
  rm -rf "$work" && mkdir -p "$work"
  sed 's/^  gold_trainer: task$/  gold_trainer: task\n  gpus_per_unit: 0.5/' workflows/smoke.yaml \
    > "$work/smoke-gpu.yaml"
  grep -q 'gpus_per_unit: 0.5' "$work/smoke-gpu.yaml" || echo "smoke.yaml changed: no GPU share set"
  export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  part sweep 90 -m taskonomy_ray sweep "$work/smoke-gpu.yaml" --storage "$work/store" \
    --data "$work/data" --no-progress
else
  echo "== sweep: skipped (no ray in $py)"
fi
