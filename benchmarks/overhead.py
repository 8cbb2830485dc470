"""Framework overhead: the same model, data, optimizer and precision for the same steps, three ways.

    python benchmarks/overhead.py [--quick] [--rounds 4] [--steps 30] [--device cpu|cuda]
                                  [--model default|nano] [--threads 1] [--kernels reference|auto|fused]
                                  [--json out.json] [--plot out.png]

  hand-written  nanoGPT's loop: memmap batches, AdamW, clipping, loss read every 10 steps
  lightning     a plain pl.Trainer (no logger, checkpointing, progress bar or validation) on
                the same LightningModule and data module
  ours          our trainer's real fit path (trainer.fit.run_fit) with the experiment's
                defaults: progress bar, CSV + W&B loggers, checkpoint manager, preemption
                flag, observability callbacks, LR schedule

in one process, interleaved (the order rotates every round) and repeated, so that the load
of a shared machine hits all alike. `--ablate` adds ours with W&B, PerfMonitor, the progress bar,
or all of them (and the CSV log) off: the differences name where ours' extra time goes.

The headline is wall time: each variant's mean step over the timed window (1 / throughput, so
work done every N steps, like interval logging, counts), as a ratio to the hand-written loop
of the same round, median over rounds (slow drift in the machine's load cancels). Beside it:
the median wall step, the median process CPU time per step (all threads; it barely moves with
other processes' load) and where the training thread's wall time went: on a CPU, waiting in
the run queue (other threads or processes had the cores) or blocked (I/O, a lock, the GIL, a
device sync), from /proc/thread-self/schedstat. The default model is the default experiment's
(GPT 0.9M, seq 256, batch 8); `--model nano` (1 layer, d 32, seq 32, batch 4) makes the step so
small that the difference ours - hand-written is the framework's per-step host cost.

The op implementations (trainer.ops) are process-wide, and ours' run_fit sets them from its
config, so every variant sets `--kernels` itself before it runs (default reference: the
hand-written loop's own ops, so the ratio is framework overhead, not kernel choice). Each round
records the routes each variant ran (op -> fused | reference on the device) in the JSON.

No checkpoint falls inside the timed steps (the default cadence is every 100 steps); the
final save of each `ours` round is timed separately and reported amortised over the cadence.
The last line is `ratio_vs_handwritten=<x>`, ours / hand-written of the headline metric
(`--metric cpu`: the median process CPU time per step instead).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    StepClock,
    build_data,
    build_net_and_module,
    clock_callback,
    compose,
    describe,
    handwritten_train,
    machine,
    markdown_table,
    plain_lightning_trainer,
    quiet,
    run_ours,
    schedule_factor,
    write_json,
)

VARIANTS = ("hand-written", "lightning", "ours")
# --ablate: ours with one feature off at a time (and all of them), to name where ours' extra time goes.
ABLATIONS = {
    "ours -W&B": ["logger.wandb=false"],
    "ours -perf": ["observability.enabled=false"],
    "ours -bar": ["trainer.progress_bar=false"],
    "ours -all": ["logger.wandb=false", "logger.csv=false", "observability.enabled=false", "trainer.progress_bar=false"],
}
NANO = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32", "data.batch_size=4"]


def run_variant(name: str, cfg, overrides: list[str], dm, device: str, warmup: int, total: int, workdir: Path, r: int) -> dict:
    from trainer import ops

    cuda = device == "cuda"
    # The mode is process-wide and ours' run_fit leaves its choice set: without this, the variant
    # after ours would run ours' routes and the one before it the previous state.
    ops.set_kernel_mode(cfg.kernels, cache_dir=os.path.expanduser(cfg.paths.cache_dir), compiled=bool(cfg.trainer.compile))
    clock = StepClock(warmup=warmup, total=total, cuda=cuda)
    if name.startswith("ours"):
        slug = name.replace(" ", "").replace("&", "")
        code = run_ours([*overrides, *ABLATIONS.get(name, []), f"run.dir={workdir}/{slug}-{r}"], [clock_callback(clock)])
        if code:
            raise RuntimeError(f"our trainer exited with code {code}")
        return clock.summary() | {"kernel_routes": kernel_routes(ops.kernel_status(), device)}
    net, module = build_net_and_module(cfg, dm)
    if name == "hand-written":
        o = cfg.optim
        handwritten_train(
            net, train_tokens=dm.windows("train").tokens(), batch_size=cfg.data.batch_size, seq_len=cfg.model.seq_len,
            steps=total, device=device, bf16=cuda, lr=o.lr, lr_factor=schedule_factor(cfg), weight_decay=o.weight_decay,
            betas=o.betas, eps=o.eps, grad_clip=cfg.trainer.gradient_clip_val, clock=clock, log_every=cfg.trainer.log_every_steps,
            compile=cfg.trainer.compile, compile_mode=cfg.trainer.compile_mode,
        )
    else:
        trainer = plain_lightning_trainer(device=device, precision="bf16-mixed" if cuda else "32-true", max_steps=total,
                                          gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[clock_callback(clock)])
        trainer.fit(module, datamodule=dm)
    return clock.summary() | {"kernel_routes": kernel_routes(ops.kernel_status(), device)}


def kernel_routes(status: dict, device: str) -> dict[str, str]:
    """op -> fused | reference on the device the variant trained on (after it ran: what it used)."""
    return {op: info["cuda" if device == "cuda" else "cpu"] for op, info in status["ops"].items()}


def describe_routes(routes: dict[str, str]) -> str:
    fused = [op for op, impl in routes.items() if impl == "fused"]
    return "reference ops" if not fused else "all fused" if len(fused) == len(routes) else "fused " + "+".join(fused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 + 12 steps (under 2 minutes on 2 busy cores)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--model", choices=("default", "nano"), default="default")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU, the same for all variants")
    ap.add_argument("--metric", choices=("wall", "cpu"), default=None,
                    help="the headline: wall (default: the mean wall time per step, i.e. throughput) or cpu "
                         "(the median process CPU time per step)")
    ap.add_argument("--kernels", choices=("reference", "auto", "fused"), default="reference",
                    help="the op implementations (kernels=...), set for every variant before it runs (default "
                         "reference: the hand-written loop's ops, so the ratio is framework overhead alone)")
    ap.add_argument("--compile", default=None, metavar="MODE",
                    help="torch.compile the model in every variant with this mode (default, reduce-overhead: the "
                         "step's forward and backward replayed as CUDA graphs, ...)")
    ap.add_argument("--ablate", action="store_true",
                    help=f"also run ours with features off: {', '.join(ABLATIONS)} (names where ours' extra time goes)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--table", default=None, help="also write the table (markdown) here")
    ap.add_argument("overrides", nargs="*", help="extra config overrides, applied to all three variants")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 12, 3
    quiet()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    total = args.warmup + args.steps
    overrides = [*(NANO if args.model == "nano" else []), f"trainer.max_steps={total}", f"kernels={args.kernels}",
                 *args.overrides]
    if args.compile:
        overrides += ["trainer.compile=true", f"trainer.compile_mode={args.compile}"]
    if device == "cuda":
        overrides.append("trainer.accelerator=gpu")
    else:
        overrides.append(f"trainer.num_threads={args.threads}")
        torch.set_num_threads(args.threads)
    cfg = compose(overrides)
    dm = build_data(cfg)
    info = machine()

    variants = VARIANTS + (tuple(ABLATIONS) if args.ablate else ())
    results: dict[str, list[dict]] = {v: [] for v in variants}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for r in range(args.rounds):
            k = r % len(variants)
            order = variants[k:] + variants[:k]  # rotate: no variant always runs first
            for name in order:
                res = run_variant(name, cfg, overrides, dm, device, args.warmup, total, Path(tmp), r)
                results[name].append(res)
                loads.append(os.getloadavg()[0])
                print(f"round {r} {name:>12}: {1e3 * res['median_step_s']:8.3f} ms/step wall, "
                      f"{1e3 * res['median_cpu_step_s']:8.3f} ms/step CPU (load {loads[-1]:.1f})", flush=True)

    pooled = {v: _pooled(rs) for v, rs in results.items()}
    for v, p in pooled.items():  # each round's variant / hand-written, then the median: slow load drift cancels
        p["paired_wall_ratio"] = statistics.median(
            r["mean_step_s"] / h["mean_step_s"] for r, h in zip(results[v], results["hand-written"]))
        p["paired_cpu_ratio"] = statistics.median(
            r["median_cpu_step_s"] / h["median_cpu_step_s"] for r, h in zip(results[v], results["hand-written"]))
    hw, pl_, ours = (pooled[v] for v in VARIANTS)
    metric = args.metric or "wall"
    # wall: the mean step over the timed window (1 / throughput: periodic work such as interval logging
    # counts); cpu: the median process CPU time per step.
    key = "mean_step_s" if metric == "wall" else "median_cpu_step_s"
    paired = "paired_wall_ratio" if metric == "wall" else "paired_cpu_ratio"
    every = cfg.checkpoint.every_n_steps
    # The ratio compares framework overhead only if every variant ran the same ops in every round.
    routes = {v: rs[0]["kernel_routes"] for v, rs in results.items()}
    same_routes = all(r["kernel_routes"] == routes["hand-written"] for rs in results.values() for r in rs)
    saves = [s for r in results["ours"] for s in r["checkpoint_save_s"]]
    save_s = statistics.median(saves) if saves else 0.0
    summary = {
        "machine": info,
        "load_avg_1m_during": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "device": device,
        "model": args.model,
        "compile": args.compile,
        "kernels": cfg.kernels,
        "kernel_routes": routes,
        "same_kernel_routes_in_every_variant": same_routes,
        "shape": {k: cfg.model[k] for k in ("d_model", "n_layers", "n_heads", "seq_len")} | {"batch_size": cfg.data.batch_size},
        "threads": args.threads if device == "cpu" else None,
        "rounds": args.rounds, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "variants": pooled,
        "per_round": results,
        "metric": metric,
        # the headline: per-round paired ratios of the metric, median over rounds
        "ratio_ours_vs_handwritten": ours[paired],
        "ratio_lightning_vs_handwritten": pl_[paired],
        "ratio_ours_vs_lightning": ours[key] / pl_[key],
        "pooled_ratio_ours_vs_handwritten": ours[key] / hw[key],
        "wall_ratio_ours_vs_handwritten": ours["paired_wall_ratio"],
        "median_wall_ratio_ours_vs_handwritten": ours["median_step_s"] / hw["median_step_s"],
        "cpu_ratio_ours_vs_handwritten": ours["paired_cpu_ratio"],
        "tree_cpu_ratio_ours_vs_handwritten": ours["mean_tree_cpu_step_s"] / hw["mean_tree_cpu_step_s"],
        "round_spread_handwritten": _spread([r[key] for r in results["hand-written"]]),
        "round_ratio_spread_ours": _spread([r[key] / h[key] for r, h in zip(results["ours"], results["hand-written"])]),
        "host_overhead_us_per_step": 1e6 * (ours[key] - hw[key]),
        "checkpoint_save_s": save_s,
        "checkpoint_every_n_steps": every,
        "ratio_ours_with_checkpoint_amortised": (ours[key] + save_s / every) / hw[key],
    }
    rows = [[v, f"{1e3 * p['mean_step_s']:.3f}", f"{p['paired_wall_ratio']:.3f}", f"{1e3 * p['median_step_s']:.3f}",
             f"{p['median_step_s'] / hw['median_step_s']:.3f}",
             f"{1e3 * p['median_cpu_step_s']:.3f}", f"{p['paired_cpu_ratio']:.3f}",
             f"{p['mean_tree_cpu_step_s'] / hw['mean_tree_cpu_step_s']:.3f}",
             *(_ms(p["wall_split"][k]) for k in ("thread_cpu_s", "runqueue_s", "blocked_s"))]
            for v, p in pooled.items()]
    table = markdown_table(["variant", "mean step, wall (ms)", "wall ratio (paired)", "median step, wall (ms)",
                            "median wall ratio", "median CPU/step (ms)", "CPU ratio (paired)",
                            "CPU incl. children ratio", "main thread: on CPU (ms)", "run queue (ms)", "blocked (ms)"], rows)
    ran = describe_routes(routes["hand-written"]) if same_routes else "DIFFERENT ops per variant: " + ", ".join(
        f"{v} {describe_routes(r)}" for v, r in routes.items())
    print(f"\n{describe(info)}\ndevice {device}, model {args.model} {summary['shape']}, "
          f"{'torch.compile mode ' + args.compile if args.compile else 'eager'}, kernels={cfg.kernels} ({ran}), "
          f"{args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up) per variant"
          + (f", {args.threads} torch thread(s)" if device == "cpu" else ""))
    print(table)
    print(f"headline metric: {metric} time per step; ours - hand-written: "
          f"{summary['host_overhead_us_per_step']:.0f} us/step")
    print(f"checkpoint save (ours, final save of each round): {1e3 * save_s:.1f} ms; amortised over every "
          f"{every} steps: ours / hand-written = {summary['ratio_ours_with_checkpoint_amortised']:.3f}")
    print(f"ours / hand-written per round ({metric}): "
          + ", ".join(f"{r[key] / h[key]:.3f}" for r, h in zip(results["ours"], results["hand-written"]))
          + f" (spread {100 * summary['round_ratio_spread_ours']:.1f}%); hand-written's round values spread "
          f"{100 * summary['round_spread_handwritten']:.1f}% (max/min - 1): the noise floor of this run; "
          f"load avg during the run {summary['load_avg_1m_during']}")
    print(f"ratio_lightning_vs_handwritten={summary['ratio_lightning_vs_handwritten']:.3f}")
    write_json(args.json, summary)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(f"overhead, {describe(info)}, device {device}, model {args.model}, "
                                    f"{'torch.compile mode ' + args.compile if args.compile else 'eager'}, "
                                    f"kernels={cfg.kernels} ({ran})\n\n{table}\n\n"
                                    f"ours - hand-written ({metric} time): {summary['host_overhead_us_per_step']:.0f} us/step\n")
    if args.plot:
        _plot(results, summary, args.plot)
    print(f"ratio_vs_handwritten={summary['ratio_ours_vs_handwritten']:.3f}")


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1 if values and min(values) > 0 else float("nan")


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1e3 * x:.3f}"


def _pooled(rounds: list[dict]) -> dict:
    """Medians over the post-warm-up steps of all rounds; mean over all timed steps; the mean split
    of the main thread's wall time (its CPU, run-queue wait, blocked) over all rounds."""
    split = {k: [r["wall_split"][k] for r in rounds] for k in ("thread_cpu_s", "runqueue_s", "blocked_s")}
    return {
        "wall_split": {k: (statistics.mean(v) if None not in v else None) for k, v in split.items()},
        "median_step_s": statistics.median(s for r in rounds for s in r["step_s"]),
        "median_cpu_step_s": statistics.median(s for r in rounds for s in r["cpu_step_s"]),
        "mean_step_s": statistics.mean(r["mean_step_s"] for r in rounds),
        "mean_tree_cpu_step_s": statistics.mean(r["mean_tree_cpu_step_s"] for r in rounds),
        "round_medians_s": [r["median_step_s"] for r in rounds],
    }


def _plot(results: dict, summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (name, rounds) in enumerate(results.items()):
        key = "median_cpu_step_s" if summary["metric"] == "cpu" else "median_step_s"
        ms = [1e3 * r[key] for r in rounds]
        ax.bar(i, 1e3 * summary["variants"][name][key], color=("#999", "#6a8fd0", "#d0762a")[i], alpha=0.8)
        ax.scatter([i] * len(ms), ms, color="k", s=12, zorder=3, label="round medians" if i == 0 else None)
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylabel(f"median {summary['metric']} time per step (ms)")
    m = summary["machine"]
    ax.set_title(f"ours / hand-written = {summary['ratio_ours_vs_handwritten']:.3f}  ({summary['device']}, "
                 f"{summary['model']} model)\n{m['gpu'] or m['cpu']}, {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
