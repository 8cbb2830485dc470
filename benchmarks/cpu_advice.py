"""Which of the compute-bound verdict's fixes help on a CPU: each one against the default, same run.

    python benchmarks/cpu_advice.py [--rounds 2] [--steps 20] [--warmup 8] [--json docs/benchmarks/cpu_advice.json]

The default experiment's model and data (GPT 0.9M, seq 256, batch 8, one process, the machine's
threads) through our trainer's real fit path, four ways:

  default    32-true, kernels=auto (the PyTorch reference on a CPU)
  bf16       trainer.precision=bf16-mixed (CPU autocast)
  fused      kernels=fused (the C++ CPU paths of csrc/)
  compile    trainer.compile=true (torch.compile, inductor's C++ backend)

in one process, interleaved (the order rotates every round). Per variant: the median wall and CPU
time per step after warm-up (compilation stays in the warm-up), and the ratios to `default` of
the same round (the median of the per-round ratios). The headline is the CPU-time ratio: on a
shared machine wall time mostly measures the neighbours (run with trainer.num_threads=1 there).
The verdict's CPU advice (trainer/observability/verdict.py `compute_fixes`; the ratios measured
here are copied into its CPU_BF16_RATIO and CPU_COMPILE_RATIO) names only the fixes whose ratio
here is clearly below 1. `--resummarize FILE` recomputes the table from a saved JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import StepClock, clock_callback, describe, machine, markdown_table, quiet, run_ours, write_json  # noqa: E402

VARIANTS = {
    "default": [],
    "bf16": ["trainer.precision=bf16-mixed"],
    "fused": ["kernels=fused"],
    "compile": ["trainer.compile=true"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--resummarize", default=None, help="recompute the summary of a saved --json file and exit")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    args = ap.parse_args()
    if args.resummarize:
        import json

        saved = json.loads(Path(args.resummarize).read_text())
        results = {n: v["per_round"] for n, v in saved["variants"].items()}
        summary = summarize(results, list(results), saved["machine"], saved["rounds"], saved["timed_steps"], saved["warmup_steps"])
        write_json(args.resummarize, summary)
        return
    quiet()
    names = [v for v in args.variants.split(",") if v]
    total = args.warmup + args.steps
    base = ["trainer.accelerator=cpu", f"trainer.max_steps={total}", "trainer.progress_bar=false", "logger.wandb=false",
            "checkpoint.save_final=false", "trainer.val_every_steps=100000", *args.overrides]
    results: dict[str, list[dict]] = {v: [] for v in names}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-advice-") as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                clock = StepClock(warmup=args.warmup, total=total)
                code = run_ours([*base, *VARIANTS[name], f"run.dir={tmp}/{name}-{r}"], [clock_callback(clock)])
                if code:
                    raise RuntimeError(f"{name} exited with code {code}")
                results[name].append(clock.summary())
                print(f"round {r} {name:>8}: {1e3 * results[name][-1]['median_step_s']:8.2f} ms/step wall, "
                      f"{1e3 * results[name][-1]['median_cpu_step_s']:8.2f} ms/step CPU", flush=True)
    write_json(args.json, summarize(results, names, machine(), args.rounds, args.steps, args.warmup))


def summarize(results: dict[str, list[dict]], names: list[str], info: dict, rounds: int, steps: int, warmup: int) -> dict:
    """Medians per variant and the per-round paired ratios to `default`; prints the table."""
    rows, summary = [], {"machine": info, "rounds": rounds, "timed_steps": steps, "warmup_steps": warmup,
                         "metric": "cpu", "variants": {}}
    for name in names:
        wall = statistics.median(s for x in results[name] for s in x["step_s"])
        cpu = statistics.median(s for x in results[name] for s in x["cpu_step_s"])
        pairs = list(zip(results[name], results["default"]))
        wall_ratio = statistics.median(x["median_step_s"] / d["median_step_s"] for x, d in pairs)
        cpu_ratio = statistics.median(x["median_cpu_step_s"] / d["median_cpu_step_s"] for x, d in pairs)
        summary["variants"][name] = {"overrides": VARIANTS[name], "median_step_s": wall, "median_cpu_step_s": cpu,
                                     "wall_ratio_vs_default": wall_ratio, "cpu_ratio_vs_default": cpu_ratio,
                                     "per_round": results[name]}
        rows.append([name, " ".join(VARIANTS[name]) or "-", f"{1e3 * cpu:.1f}", f"{cpu_ratio:.3f}", f"{1e3 * wall:.1f}",
                     f"{wall_ratio:.3f}"])
    print(f"\n{describe(info)}; {rounds} rounds x {steps} timed steps (+{warmup} warm-up)")
    print(markdown_table(["variant", "overrides", "median CPU/step (ms)", "CPU ratio vs default", "median step (ms)",
                          "wall ratio vs default"], rows))
    return summary


if __name__ == "__main__":
    main()
