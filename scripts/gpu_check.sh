#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most GPU_BUDGET_S (default 480 s = 8 minutes):
#   1. install the carried wheels (.devwheels/ from scripts/gpu_wheels.sh: hydra, omegaconf, datasets,
#      deepspeed, ... for a machine without a package index); record card, driver, torch, CUDA,
#   2. build the kernels ahead of time for this GPU,
#   3. the multi-seed convergence test first (tests/gpu/test_convergence_gpu.py), then every other
#      `gpu` test (kernels against float64, model layouts, whole-GPT gradients, NVML),
#   4. the kernel benchmark (fwd and fwd+bwd per op vs eager and torch.compile, % of copy bandwidth,
#      linear CE memory and chunk sizes), which writes the auto table candidate,
#   5. with the time left: scripts/gpu_obs.sh and scripts/gpu_bench.sh (rows in priority order: GPT-2-124M
#      hand-written vs ours with the same ops, tiny-model overhead, ours with kernels=auto and fused, CUDA
#      graphs, the 1.1B model on one GPU, MFU variants; benchmarks/mfu.py --list).
# GPU_CHECK_PARTS=perf runs only 1, 2 and 5 (the trainer-level benchmarks get the whole budget).
# A step that fails is recorded and the next one still runs; each has a time limit inside the budget.
#
# Everything does not fit in one 8-minute call, by design: steps 2-4 may take all of it (limits 240 +
# 150 + 150 + 180 s, each cut to what the budget has left), and the rows of step 5 are estimated at
# ~16 minutes in all (benchmarks/mfu.py --list, plus ~100 s of tiny-model overhead runs). The plan:
#   call 1: bash scripts/gpu_check.sh                                      (<= 8 min: correctness, kernels)
#   call 2, at once (the machine stays warm only ~30 s after a call):
#           GPU_CHECK_PARTS=perf GPU_BUDGET_S=<device seconds left - 60> bash scripts/gpu_check.sh
# Call 2 finds call 1's kernels, wheels and token shards in the git-ignored .cache/gpu_check/ (kept
# between calls on a warm machine) and skips the build. Its rows run in priority order, each skipped
# when what is left cannot hold it: with 15 minutes of device time in all, machine start included,
# call 2 gets ~4-5 minutes, enough for hand-written vs ours_reference (GPT-2-124M), the tiny-model
# overhead and ours_auto/ours_fused (~215 s with compile caches cold), rarely more; the MFU variants
# after them (1b_single, ...) need a further session.
#
# $OUT (default ./gpu_out) receives at most 7 files (the device tool returns 8): summary.md (read this),
# convergence.json, kernels_bench.json, kernels_bench.md, auto_table_candidate.json, bench.tgz (mfu.json,
# overhead_gpu*.json and their tables: the raw results to commit under docs/gpu/), gpu_logs.tgz (every
# log and JUnit XML).
#   bash scripts/gpu_wheels.sh                 # here, once: fills the git-ignored .devwheels/
#   OUT=/tmp/gpu bash scripts/gpu_check.sh     # there, with .devwheels carried along (~8 min)
# Without CUDA it says so and exits 0 having checked nothing; GPU_CHECK_DRY_RUN=1 then runs the same
# steps on the CPU (kernels from the JIT cache, the gpu tests skip, benchmark --smoke) to check the
# script itself, e.g. GPU_CHECK_DRY_RUN=1 TRAINER_CACHE=~/.cache/trainer PYTHON=.venv/bin/python.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$SECONDS
BUDGET=${GPU_BUDGET_S:-480}
OUT=${OUT:-$PWD/gpu_out}
WORK=${WORK:-/tmp/gpu_work}
PYTHON=${PYTHON:-python3}
PARTS=${GPU_CHECK_PARTS:-all}
case "$PARTS" in all|perf) ;; *) echo "GPU_CHECK_PARTS=$PARTS: use all or perf"; exit 2 ;; esac
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 MAX_JOBS=${MAX_JOBS:-16}
# What a second call on the same warm machine reuses (kernels, wheels, token shards): in the repository's
# git-ignored .cache/, which the device tool keeps between calls.
KEEP=${GPU_CHECK_KEEP:-$PWD/.cache/gpu_check}
mkdir -p "$KEEP"
export TRAINER_CACHE=${TRAINER_CACHE:-$KEEP/trainer-cache} PYTHON
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  msg="gpu_check: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False): nothing was checked"
  if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ]; then
    echo "$msg; run this on a GPU machine (GPU_CHECK_DRY_RUN=1 rehearses the steps on the CPU)."
    printf '# GPU check: not run\n\n%s.\n' "$msg" > "$OUT/summary.md"
    exit 0
  fi
  echo "$msg; GPU_CHECK_DRY_RUN=1: rehearsing every step on the CPU."
  DRY=1
else
  DRY=0
fi

left() { echo $(( BUDGET - (SECONDS - T0) )); }
step() {  # step NAME LIMIT_S COMMAND...: runs within the budget, logs to $WORK/NAME.log, records rc and time
  local name=$1 limit=$2; shift 2
  local room=$(( $(left) - 20 ))  # 20 s kept for the summary and the archive
  if [ "$room" -lt 10 ]; then
    printf '%-12s skipped: %ss of the %ss budget left\n' "$name" "$(left)" "$BUDGET" >> "$WORK/steps.txt"
    return
  fi
  [ "$limit" -gt "$room" ] && limit=$room
  local t=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local note=""; [ $rc -eq 124 ] && note=" (time limit ${limit}s)"
  printf '%-12s rc=%-3s %4ss%s\n' "$name" "$rc" "$((SECONDS - t))" "$note" >> "$WORK/steps.txt"
}

# 1. packages the GPU image lacks, from wheels carried along (no index there)
site=$KEEP/site
if [ -d .devwheels ] && ! "$PYTHON" -c "import hydra, omegaconf, datasets, deepspeed" 2>/dev/null \
   && ! PYTHONPATH="$PYTHONPATH:$site" "$PYTHON" -c "import hydra, omegaconf, datasets, deepspeed" 2>/dev/null; then
  mkdir -p "$site"
  {
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --find-links .devwheels --target "$site" .devwheels/*.whl
    for sdist in .devwheels/*.tar.gz; do
      DS_BUILD_OPS=0 "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --find-links .devwheels \
        --target "$site" "$sdist"
    done
  } > "$WORK/install.log" 2>&1
fi
[ -d "$site" ] && export PYTHONPATH="$PYTHONPATH:$site"
{
  date -u +"%F %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda);
if torch.cuda.is_available(): print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"
  "$PYTHON" -c "import hydra, omegaconf, datasets, deepspeed, pytorch_lightning as pl; print('hydra', hydra.__version__, 'datasets', datasets.__version__, 'deepspeed', deepspeed.__version__, 'lightning', pl.__version__)" 2>&1 | tail -n 1
} > "$WORK/machine.txt" 2>&1
printf '%-12s %4ss\n' "install" "$((SECONDS - T0))" > "$WORK/steps.txt"

# 2. kernels for this GPU, ahead of time (the tests and the benchmark load them from here)
if [ $DRY = 0 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
if [ $DRY = 0 ]; then
  export TRAINER_KERNELS_DIR="$KEEP/kernels_prebuilt"  # --reuse: a second call keeps the first call's build
  step build 240 "$PYTHON" -m trainer.ops.build --reuse --out "$TRAINER_KERNELS_DIR"
else  # the rehearsal takes the CPU build from the JIT cache ($TRAINER_CACHE), built once
  printf '%-12s dry run: the CPU build comes from the cache %s\n' "build" "$TRAINER_CACHE" >> "$WORK/steps.txt"
fi

if [ "$PARTS" = all ]; then
# 3. tests: the convergence test first (its curves land in $OUT whatever the outcome)
pytest=("$PYTHON" -m pytest -q -p no:cacheprovider)
CONVERGENCE_OUT="$OUT/convergence.json" step convergence 150 \
  "${pytest[@]}" -s --junitxml="$WORK/convergence.xml" tests/gpu/test_convergence_gpu.py
step gpu_tests 150 "${pytest[@]}" -m gpu --junitxml="$WORK/gpu_tests.xml" \
  tests/gpu/test_kernels_gpu.py tests/ops/test_kernels_layouts.py tests/ops/test_kernels_model_grads.py \
  tests/gpu/test_step_syncs_gpu.py tests/unit/test_step_overhead.py

# 4. the kernel benchmark: what the auto table is made of
bench_args=(--out "$WORK/bench_kernels" --budget-s 150); [ $DRY = 1 ] && bench_args+=(--smoke --no-compile)
step kernel_bench 180 "$PYTHON" benchmarks/kernels.py "${bench_args[@]}"
for f in kernels_bench.json kernels_bench.md auto_table_candidate.json; do
  [ -f "$WORK/bench_kernels/$f" ] && cp "$WORK/bench_kernels/$f" "$OUT/$f"
done
fi

# 5. with what is left: NVML checks, then the trainer-level benchmarks
if [ $DRY = 0 ]; then
  [ "$PARTS" = all ] && OUT="$WORK" step obs 60 bash scripts/gpu_obs.sh
  bench_budget=$(( $(left) - 30 ))
  if [ "$bench_budget" -ge 90 ]; then
    OUT="$WORK" BENCH_BUDGET_S=$bench_budget step mfu_bench "$((bench_budget + 10))" bash scripts/gpu_bench.sh
  else
    printf '%-12s skipped: %ss left, needs 120s\n' "mfu_bench" "$(left)" >> "$WORK/steps.txt"
  fi
else  # the rehearsal: every benchmark row on a tiny model on the CPU (checks the scripts, measures nothing)
  step mfu_bench 200 "$PYTHON" benchmarks/mfu.py --device cpu --smoke --variants all --steps 2 --warmup 1 \
    --zero-steps 1 --budget-s 190 --out "$WORK/bench"
fi
# One archive, not a file per row: the device tool returns at most 8 files from $OUT.
raw=$(cd "$WORK" && ls bench/*.json bench/*_table.md 2>/dev/null)
[ -n "$raw" ] && (cd "$WORK" && echo "$raw" | tar -czf "$OUT/bench.tgz" -T -)

"$PYTHON" scripts/gpu_summary.py --work "$WORK" --out "$OUT" --budget "$BUDGET" --elapsed "$((SECONDS - T0))" \
  > "$WORK/summary.log" 2>&1 || cat "$WORK/summary.log"
tar -czf "$OUT/gpu_logs.tgz" -C "$WORK" --exclude=kernels_prebuilt . 2>/dev/null
cat "$OUT/summary.md"
