#!/usr/bin/env bash
# Everything that needs a GPU, in one run that fits a short GPU slot (under ~9.5 min on an H100/H200):
#   1. install carried wheels (.devwheels/, for machines without a package index),
#   2. kernels: AOT build, `gpu` tests, kernel benchmark (scripts/gpu_kernels.sh),
#   3. observability with the real NVML (scripts/gpu_obs.sh),
#   4. MFU, overhead and 1B ZeRO-2 benchmarks (scripts/gpu_bench.sh).
# Work files go to $WORK; $OUT (default ./gpu_out) receives a few files: summary.md (tables last)
# and gpu_logs.tgz (every log, table and JSON).   OUT=/tmp/gpu bash scripts/gpu_check.sh
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/gpu_out}
WORK=${WORK:-/tmp/gpu_work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHON=${PYTHON:-python3}
summary="$WORK/summary.md"
T0=$SECONDS

if [ -d .devwheels ] && ! "$PYTHON" -c "import hydra, omegaconf, datasets, deepspeed" 2>/dev/null; then
  site=/tmp/site; mkdir -p "$site"
  {
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --target "$site" .devwheels/*.whl
    for sdist in .devwheels/*.tar.gz; do
      DS_BUILD_OPS=0 "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --target "$site" "$sdist"
    done
  } > "$WORK/install.log" 2>&1
  export PYTHONPATH="$PYTHONPATH:$site"
fi
{ nvidia-smi; "$PYTHON" -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
  "$PYTHON" -c "import hydra, omegaconf, datasets, deepspeed, pytorch_lightning as pl; print('hydra', hydra.__version__, 'datasets', datasets.__version__, 'deepspeed', deepspeed.__version__, 'lightning', pl.__version__)"
} > "$WORK/machine.txt" 2>&1
echo "install + machine: $((SECONDS - T0))s" > "$WORK/steps.txt"

step() {  # step NAME SECONDS COMMAND...: a time limit, a log, the exit code and duration recorded
  local name=$1 limit=$2; shift 2
  local t=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  printf '%-8s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t))" >> "$WORK/steps.txt"
}

OUT="$WORK/kernels" KERNELS_BUDGET_S=${KERNELS_BUDGET_S:-245} step kernels 270 bash scripts/gpu_kernels.sh
OUT="$WORK" step obs 60 bash scripts/gpu_obs.sh
OUT="$WORK" BENCH_BUDGET_S=${BENCH_BUDGET_S:-170} step bench 180 bash scripts/gpu_bench.sh

{
  echo "# GPU check $(date -u +%F)"; echo '```'; grep -E "NVIDIA H|Driver Version|^[0-9]\.[0-9]+|^hydra|^torch" "$WORK/machine.txt" | head -n 6
  cat "$WORK/steps.txt"; echo '```'
  for t in "$WORK"/kernels/kernels_bench.md "$WORK"/bench/*.md; do
    [ -f "$t" ] && { echo; echo "## $(basename "$t")"; cat "$t"; }
  done
  echo; echo "## test results"; echo '```'
  grep -hE "[0-9]+ (passed|failed)" "$WORK"/kernels/tests.log "$WORK"/obs/pytest.log 2>/dev/null | tail -n 4; echo '```'
} > "$summary"
tar -czf "$OUT/gpu_logs.tgz" -C "$WORK" . 2>/dev/null
cp "$summary" "$OUT/summary.md"
cat "$summary"
