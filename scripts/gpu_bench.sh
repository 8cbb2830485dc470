#!/usr/bin/env bash
# The trainer-level GPU benchmarks, most important first, within one time budget (scripts/gpu_check.sh's
# "mfu_bench" step). Each row runs in its own process; a row that cannot fit is reported as skipped.
#   1. GPT-2-124M: hand-written + torch.compile, then ours + torch.compile with the same (reference) ops:
#      the framework's own cost, same benchmark run (~95 s)
#   2. framework overhead on the GPU, default tiny model, eager: hand-written vs plain Lightning vs ours (~35 s)
#   3. GPT-2-124M: ours with kernels=auto (the default) and kernels=fused (~80 s)
#   4. the tiny model again with torch.compile mode reduce-overhead in all three (CUDA graphs) (~60 s)
#   5. every other row of benchmarks/mfu.py --list in its order (the 1.1B model on one GPU, micro-batch,
#      chunked loss, cuDNN attention, CUDA graphs, ZeRO-2, ...), as long as the budget lasts
#   6. the data loader at GPT-2 shapes and the observability overhead, if time is left
# Writes JSON, logs and *_table.md files to $OUT/bench (default ./gpu_out/bench).
#   OUT=/tmp/gpu BENCH_BUDGET_S=300 bash scripts/gpu_bench.sh
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT=${OUT:-$PWD/gpu_out}
out="$OUT/bench"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One id for every mfu.py call below: their rows are one benchmark run, so ratios between them are
# given (benchmarks/mfu.py --bench-run); rows left in mfu.json by an earlier run are not compared.
export BENCH_RUN_ID=${BENCH_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)-$$}
budget=${BENCH_BUDGET_S:-225}
py=${PYTHON:-python3}
left() { echo $(( budget - SECONDS )); }
mfu() {  # mfu ROWS...: rows of benchmarks/mfu.py, appended to $out/mfu.json, with what is left minus $1 s kept back
  local keep=$1; shift
  "$py" benchmarks/mfu.py --variants "$(IFS=,; echo "$*")" --append --budget-s $(( $(left) - keep )) --out "$out" \
    2>&1 | tee -a "$out/mfu.log" | grep -E "^([a-z0-9_]+: |micro-batch)" || true
}
overhead() {  # overhead NAME LIMIT [ARGS...]: the tiny-model overhead benchmark on the GPU, 2 rounds x 60 steps
  local name=$1 t=$2; shift 2
  [ "$t" -gt $(( $(left) - 3 )) ] && t=$(( $(left) - 3 ))
  if [ "$t" -lt 15 ]; then echo "$name: skipped, $(left) s left" | tee "$out/${name}_table.md"; return; fi
  timeout --kill-after=5 "$t" "$py" benchmarks/overhead.py --device cuda --rounds 2 --steps 60 --warmup 10 "$@" \
    --json "$out/$name.json" --table "$out/${name}_table.md" > "$out/$name.log" 2>&1
  echo "$name rc=$? ($(tail -n 1 "$out/$name.log"))"
}
rm -f "$out/mfu.json"

mfu 40 handwritten ours_reference
overhead overhead_gpu 40
mfu 65 ours_auto ours_fused
overhead overhead_gpu_cudagraphs 60 --compile reduce-overhead
rest=$("$py" benchmarks/mfu.py --list | awk '{print $1}' | grep -vxE 'handwritten|ours_reference|ours_auto|ours_fused')
mfu 25 $rest

if [ "$(left)" -ge 25 ]; then
  timeout --kill-after=5 20 "$py" benchmarks/data.py --loader-only --workers 0,4 --batches 200 \
    --json "$out/data_gpu.json" > "$out/data_gpu.log" 2>&1
  echo "data rc=$?"; grep -E "^\| (16|64) x" "$out/data_gpu.log" || true
fi
if [ -f benchmarks/observability_overhead.py ] && [ "$(left)" -ge 30 ]; then
  timeout --kill-after=5 $(( $(left) - 5 )) "$py" benchmarks/observability_overhead.py --device cuda --rounds 2 \
    > "$out/observability_overhead.log" 2>&1
  echo "observability_overhead rc=$?"
fi
echo "bench: ${SECONDS}s of ${budget}s"
