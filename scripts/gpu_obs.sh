#!/usr/bin/env bash
# Observability checks on a real GPU with the real NVML (scripts/gpu_check.sh calls this).
# Writes logs, the test run's dir and its HTML report under "$OUT/obs" (default /tmp/gpu_obs).
#   bash scripts/gpu_obs.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
out="${OUT:-/tmp/gpu_obs}/obs"
mkdir -p "$out"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "${TRAINER_VENV:-$here/.venv}/bin/python" ]; then py="${TRAINER_VENV:-$here/.venv}/bin/python"; else py=python; fi
fi
export OBS_GPU_ARTIFACTS="$out" WANDB_MODE=offline PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -q -d PERFORMANCE,POWER,TEMPERATURE,CLOCK > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -m pytest -m gpu tests/gpu/test_obs_gpu.py -v -s -rs -p no:cacheprovider 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
if [ -d "$out/run/perf" ]; then
  "$py" -m trainer.report run.dir="$out/run" 2>&1 | tee "$out/report.log"
fi
# The <=1% overhead figure on this GPU (short: two ABBA rounds).
timeout 300 "$py" benchmarks/observability_overhead.py --device cuda --steps 40 --warmup 10 --rounds 2 \
  --cache-dir "$out/cache" 2>&1 | tee "$out/overhead.log" || echo "overhead benchmark failed or timed out" | tee -a "$out/overhead.log"
exit "$rc"
