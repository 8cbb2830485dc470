#!/usr/bin/env bash
# Observability checks on a real GPU with the real NVML (scripts/gpu_check.sh calls this; ~30 s).
# Writes the pytest log, nvidia-smi's view, the test run's dir and its HTML report under "$OUT/obs".
# The overhead figure comes from benchmarks/observability_overhead.py (run by the benchmark step).
#   OUT=/tmp/gpu bash scripts/gpu_obs.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
out="${OUT:-/tmp/gpu_obs}/obs"
mkdir -p "$out"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "${TRAINER_VENV:-$here/.venv}/bin/python" ]; then py="${TRAINER_VENV:-$here/.venv}/bin/python"; else py=python3; fi
fi
export OBS_GPU_ARTIFACTS="$out" WANDB_MODE="${WANDB_MODE:-disabled}" PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -q -d PERFORMANCE,POWER,TEMPERATURE,CLOCK > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -m pytest -m gpu tests/gpu/test_obs_gpu.py -v -s -rs -p no:cacheprovider 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
if [ -d "$out/run/perf" ]; then
  "$py" -m trainer.report run.dir="$out/run" 2>&1 | tee "$out/report.log"
fi
exit "$rc"
