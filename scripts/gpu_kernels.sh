#!/usr/bin/env bash
# GPU check of the custom kernels, in one short slot (~5 minutes, at most KERNELS_BUDGET_S=420
# plus the last step's overrun guard; a rerun must still fit):
#   1. build trainer_kernels ahead of time (python -m trainer.ops.build) for this GPU,
#   2. run the `gpu` tests (tests/gpu/test_kernels_gpu.py, tests/ops),
#   3. run benchmarks/kernels.py,
# then print a summary and the benchmark table last. Logs, JUnit XML and the table go to $OUT
# (default ./gpu_out). A failing step is reported and the next one still runs; the exit code
# is non-zero when any step failed. Called from scripts/gpu_check.sh.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-./gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TRAINER_CACHE=${TRAINER_CACHE:-$HOME/.cache/trainer}

declare -a SUMMARY=()
FAILED=0

step() {  # step NAME TIMEOUT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  echo "== $name (limit ${limit}s) -> $log" >&2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then
    SUMMARY+=("ok     $name (${took}s)")
  else
    FAILED=1
    [ $rc -eq 124 ] && SUMMARY+=("TIMEOUT $name after ${took}s (see $log)") || SUMMARY+=("FAILED $name rc=$rc (${took}s, see $log)")
    tail -n 25 "$log" >&2
  fi
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
} >"$OUT/env.txt"

# The whole check stays inside BUDGET_S (default 7 minutes): the benchmark gets what is left,
# and drops to --quick --no-compile when that is little.
BUDGET_S=${KERNELS_BUDGET_S:-420}
step "build kernels (AOT, arch $TORCH_CUDA_ARCH_LIST)" 200 "$OUT/build.log" \
  "$PY" -m trainer.ops.build --verbose
step "gpu tests" 150 "$OUT/tests.log" \
  "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/junit.xml" tests/gpu/test_kernels_gpu.py tests/ops
left=$((BUDGET_S - SECONDS))
[ $left -lt 60 ] && left=60
bench_args=(--out "$OUT" --budget-s $((left - 20)))
if [ $left -lt 150 ]; then
  bench_args+=(--quick --no-compile)
  SUMMARY+=("note   benchmark reduced to --quick --no-compile (${left}s left of ${BUDGET_S}s)")
fi
step "benchmark" "$left" "$OUT/bench.log" "$PY" benchmarks/kernels.py "${bench_args[@]}"

echo
echo "== kernels GPU check summary ($(head -n 2 "$OUT/env.txt" | tail -n 1))"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
grep -E "passed|failed|skipped|error" "$OUT/tests.log" | tail -n 1 | sed 's/^/  tests: /'
if [ -f "$OUT/kernels_bench.md" ]; then
  echo
  cat "$OUT/kernels_bench.md"
fi
exit $FAILED
