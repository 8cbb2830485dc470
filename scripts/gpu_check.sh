#!/usr/bin/env bash
# Everything that needs a GPU, in one run that fits a short GPU slot (~8 min on an H100/H200):
#   1. install carried wheels (.devwheels/, for machines without an index), 2. build the CUDA kernels,
#   3. the `gpu`-marked tests (kernels, real NVML), 4. kernel, MFU and overhead benchmarks.
# Writes logs and tables to $OUT (default ./gpu_out) and prints a short table last.
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary="$OUT/summary.txt"; : > "$summary"

if [ -d .devwheels ] && ! python3 -c "import hydra, omegaconf, datasets, deepspeed" 2>/dev/null; then
  site=/tmp/site; mkdir -p "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .devwheels/*.whl > "$OUT/install.log" 2>&1
  for sdist in .devwheels/*.tar.gz; do
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$sdist" >> "$OUT/install.log" 2>&1
  done
  export PYTHONPATH="$PYTHONPATH:$site"
fi
{ nvidia-smi; python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"; } > "$OUT/machine.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record rc and duration
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-10s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$summary"
}

step kernels 330 bash scripts/gpu_kernels.sh
step obs      60 bash scripts/gpu_obs.sh
step bench   240 bash scripts/gpu_bench.sh

echo "== machine";  head -n 30 "$OUT/machine.txt" | grep -E "NVIDIA|Driver|^[0-9]" | head -n 4
for t in "$OUT"/*table*.md "$OUT"/*/*table*.md; do [ -f "$t" ] && { echo "== $t"; cat "$t"; }; done
echo "== steps"; cat "$summary"
