#!/usr/bin/env bash
# The GPU benchmarks, in the order that matters most, within one time budget (scripts/gpu_check.sh's
# "bench" step; ~4 min on an H100/H200):
#   1. GPT-2-124M MFU: hand-written + torch.compile vs ours + torch.compile vs ours + compile + kernels=fused
#   2. framework overhead on the GPU (default tiny model: the step is host-bound, so ours - hand-written
#      is the host time our trainer adds per step)
#   3. the ~1.1B config with DeepSpeed ZeRO-2 on one GPU: tokens/s, MFU, peak memory
#   4. the data loader's tokens/s at GPT-2 shapes on this host, if time is left
#   5. benchmarks/observability_overhead.py, if present and time is left
# Each step gets what is left of BENCH_BUDGET_S (default 225 s); a step that cannot fit is reported as
# skipped. With ~170 s the MFU trio and the overhead run fit; the 1.1B run needs ~60 s more
# (or run it alone: python benchmarks/mfu.py --variants zero2_1b --append --out $OUT/bench).
# Writes JSON, logs and *_table.md files to $OUT/bench (default ./gpu_out/bench).
#   OUT=/tmp/gpu BENCH_BUDGET_S=300 bash scripts/gpu_bench.sh
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT=${OUT:-$PWD/gpu_out}
out="$OUT/bench"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
budget=${BENCH_BUDGET_S:-225}
py=${PYTHON:-python3}
left() { echo $(( budget - SECONDS )); }

# 1. MFU (keeps ~30 s back for the overhead run)
"$py" benchmarks/mfu.py --variants handwritten,ours,ours_fused --budget-s $(( $(left) - 30 )) --out "$out" \
  2>&1 | tee "$out/mfu.log" | grep -E "^(handwritten|ours|micro-batch)" || true

# 2. overhead on the GPU: 2 rounds x 60 timed steps per variant, interleaved
t=$(( $(left) - 3 )); [ "$t" -gt 35 ] && t=35
if [ "$t" -ge 15 ]; then
  timeout --kill-after=5 "$t" "$py" benchmarks/overhead.py --device cuda --rounds 2 --steps 60 --warmup 10 \
    --json "$out/overhead_gpu.json" --table "$out/overhead_gpu_table.md" > "$out/overhead_gpu.log" 2>&1
  echo "overhead rc=$? ($(tail -n 1 "$out/overhead_gpu.log"))"
else
  echo "overhead: skipped, $(left) s left" | tee "$out/overhead_gpu_table.md"
fi

# 3. ~1.1B with ZeRO-2 on one GPU (mfu.py records it as skipped when the budget is too short)
"$py" benchmarks/mfu.py --variants zero2_1b --append --budget-s $(( $(left) - 3 )) --out "$out" \
  2>&1 | tee -a "$out/mfu.log" | grep -E "^zero2" || true

# 4. the loader at GPT-2 shapes on this host (pinned memory, 0 and 4 workers), if there is time
if [ "$(left)" -ge 25 ]; then
  timeout --kill-after=5 20 "$py" benchmarks/data.py --loader-only --workers 0,4 --batches 200 \
    --json "$out/data_gpu.json" > "$out/data_gpu.log" 2>&1
  echo "data rc=$?"; grep -E "^\| (16|64) x" "$out/data_gpu.log" || true
fi

# 5. the observability helper's own overhead benchmark, if there is time
if [ -f benchmarks/observability_overhead.py ] && [ "$(left)" -ge 30 ]; then
  timeout --kill-after=5 $(( $(left) - 5 )) "$py" benchmarks/observability_overhead.py --device cuda --rounds 2 \
    > "$out/observability_overhead.log" 2>&1
  echo "observability_overhead rc=$?"
fi
echo "bench: ${SECONDS}s of ${budget}s"
