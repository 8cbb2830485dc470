"""Memory per rank, measured through the trainer, beside the memory plan's prediction and the ZeRO formula.

    python benchmarks/memory.py                         # every strategy, 2 ranks, a 54.7M-parameter GPT
    python benchmarks/memory.py --strategies ddp,fsdp2 --d-model 256 --layers 4 --json out.json
    python benchmarks/memory.py --activation-checkpointing   # none/full/selective: memory and step time

Each strategy runs the trainer's own path (`trainer.train`'s compose, prepare_run, run_fit) on 2 gloo
ranks under torchrun, CPU, fp32, AdamW, for a few steps. A probe callback on every rank samples the
bytes malloc has in use (glibc mallinfo2, MALLOC_ARENA_MAX=1 so every thread's allocations are seen)
and the resident set size, every 0.5 ms, and keeps the peak of each phase of the steps after the
first: forward, backward, optimizer step (gradient clipping included). Bytes are counted above the
rank's baseline, taken after the imports and before anything of the run is built.

Beside each measured peak: the memory plan's prediction for the same overrides (trainer/planning,
what `python -m trainer.plan` prints) and the ZeRO paper's formula for the model state (4 + 4 + 8
bytes per parameter, sharded per stage; FSDP counts as stage 3). The formula is shown as it is: it
has no activations, buffers or temporaries, which is why the plan and the measurement exceed it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRATEGIES = ("ddp", "fsdp", "fsdp2", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3")
PHASES = ("forward", "backward", "optimizer")


def overrides(args, strategy: str, *, devices: int, extra=()) -> list[str]:
    return [
        f"strategy={strategy}", f"trainer.devices={devices}", "trainer.accelerator=cpu", "trainer.precision=32-true",
        f"model.d_model={args.d_model}", f"model.n_layers={args.layers}", f"model.n_heads={max(1, args.d_model // 64)}",
        f"model.seq_len={args.seq_len}", f"data.batch_size={args.batch_size}", "data.val_batches=1",
        f"trainer.max_steps={args.steps}", "trainer.val_every_steps=1000", "trainer.log_every_steps=1",
        "trainer.progress_bar=false", "logger.wandb=false", "checkpoint.save_final=false", "checkpoint.every_n_steps=1000",
        "plan.check=off", "scheduler.warmup_steps=1", *extra,
    ]


# ------------------------------------------------------------------------------ one rank (under torchrun)
def probe_callback(sampler, first_measured_step: int):
    """Attribute the host-memory samples to the phases of every step from `first_measured_step` (1-based) on."""
    import pytorch_lightning as pl

    class MemoryProbe(pl.Callback):
        def _measuring(self, trainer) -> bool:
            return trainer.global_step + 1 >= first_measured_step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sampler.phase("forward" if self._measuring(trainer) else None)

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            sampler.phase("backward" if self._measuring(trainer) else None)

        def on_after_backward(self, trainer, pl_module) -> None:
            sampler.phase("optimizer" if self._measuring(trainer) else None)  # clipping and the step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sampler.phase(None)

    return MemoryProbe()


def warm_up(out_dir: Path, args_overrides: list[str]) -> None:
    """The same configuration with a tiny model, for 2 steps, in this process: the libraries a run imports
    lazily (DeepSpeed pulls in ~700 modules at initialize, torch more at the first step) are loaded
    before the baseline, so the measurement is the run's memory, not the libraries'."""
    from benchmarks.common import run_ours

    tiny = [o for o in args_overrides if not o.startswith(("model.", "trainer.max_steps=", "run.dir="))]
    run_ours([*tiny, "model.d_model=64", "model.n_layers=1", "model.n_heads=1", "trainer.max_steps=2",
              f"run.dir={out_dir / 'warm-up'}"], [])
    _forget_deepspeed_groups()
    # The next process group reuses torchrun's store: give it new key names, or gloo finds the warm-up's
    # (dead) addresses under the old ones ("connectFullMesh ... Connection refused").
    from torch.distributed import distributed_c10d

    distributed_c10d._world.group_count = 1000


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process groups in module globals; the warm-up's were destroyed with its process
    group (torch's destroy, not DeepSpeed's, which would have released them), and the measured run must
    build new ones. A second run in one process is this benchmark's need only."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._release_process_group_references()


def rank_worker(out_dir: Path, args_overrides: list[str]) -> None:
    import gc

    import torch

    from benchmarks.common import StepClock, clock_callback, run_ours
    from trainer.observability.host_memory import PeakSampler

    rank = int(os.environ.get("RANK", "0"))
    steps = int(next(o.split("=")[1] for o in args_overrides if o.startswith("trainer.max_steps=")))
    warm_up(out_dir, args_overrides)
    gc.collect()
    sampler = PeakSampler()
    sampler.baseline()
    sampler.start()
    clock = StepClock(warmup=1, total=steps)
    run_ours(args_overrides, [probe_callback(sampler, first_measured_step=2), clock_callback(clock)])
    sampler.stop()
    result = {"rank": rank, "peaks": sampler.peaks, "median_step_s": clock.summary()["median_step_s"],
              "torch_threads": torch.get_num_threads()}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------ the driver
def measure(args, strategy: str, devices: int, extra=()) -> dict:
    """Run one configuration through the trainer on `devices` ranks; per-rank peaks."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ov = overrides(args, strategy, devices=devices, extra=extra) + [f"run.dir={tmp / 'run'}",
                                                                      f"paths.cache_dir={args.cache_dir}"]
        # One malloc arena (mallinfo2 sees every thread); tensors above 1 MiB mmapped and unmapped when freed,
        # so RSS follows the live bytes instead of keeping freed heap pages.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1",
               "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
               "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path("~/.cache/trainer/torch_extensions").expanduser()))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               __file__, "--rank-worker", str(tmp), "--", *ov]
        t0 = time.time()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{strategy} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        ranks = sorted((json.loads(p.read_text()) for p in tmp.glob("rank*.json")), key=lambda r: r["rank"])
        return {"strategy": strategy, "devices": devices, "overrides": ov[:-2], "wall_s": time.time() - t0, "ranks": ranks}


def predicted(ov: list[str]):
    from trainer.config import compose_config
    from trainer.plan import plan_config

    return plan_config(compose_config(ov))[0]


def _add_plan(m: dict, ov: list[str]) -> None:
    plan = predicted(ov)
    m["plan"] = {p: u.__dict__ | {"total": u.total} for p, u in plan.memory.phases.items()}
    m["plan_host"] = plan.memory.host
    m["formula"] = plan.memory.formula.__dict__ | {"total": plan.memory.formula.total}
    m["n_params"] = plan.trace.n_params


def strategy_rows(args) -> list[dict]:
    rows = []
    for strategy in args.strategies.split(","):
        m = measure(args, strategy, args.ranks)
        _add_plan(m, overrides(args, strategy, devices=args.ranks))
        rows.append(m)
        print(f"  measured {strategy}: {m['wall_s']:.0f} s", flush=True)
    return rows


def ac_rows(args) -> list[dict]:
    """Activation checkpointing none/full/selective through the trainer, one process: memory and step time."""
    rows = []
    for mode in ("none", "full", "selective"):
        extra = (f"trainer.activation_checkpointing={mode}",)
        m = measure(args, "single", 1, extra=extra)
        _add_plan(m, overrides(args, "single", devices=1, extra=extra))
        m["activation_checkpointing"] = mode
        rows.append(m)
        print(f"  measured activation_checkpointing={mode}: {m['wall_s']:.0f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--activation-checkpointing", action="store_true",
                    help="compare trainer.activation_checkpointing=none|full|selective instead of strategies")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/trainer"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--table-from", type=Path, help="print the tables of results written earlier with --json")
    ap.add_argument("--replan", action="store_true", help="with --table-from: predict again with the current planner")
    ap.add_argument("--rank-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        rank_worker(args.rank_worker, args.overrides)
        return
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        rows = saved["rows"]
        for r in rows if args.replan else []:
            _add_plan(r, [_current_key(o) for o in r["overrides"]])
        (print_ac_table if "activation_checkpointing" in rows[0] else print_strategy_table)(rows)
        if args.json:  # the same measurements, with the predictions of the planner as it is now
            args.json.write_text(json.dumps({**saved, "replanned": args.replan, "rows": rows}, indent=2) + "\n")
        return

    from benchmarks.common import describe, machine

    info = machine()
    print(describe(info), flush=True)
    if args.activation_checkpointing:
        rows = ac_rows(args)
        print_ac_table(rows)
    else:
        rows = strategy_rows(args)
        print_strategy_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2) + "\n")


def _current_key(override: str) -> str:
    """An override saved by an earlier version, under the key it has now (warmup moved to the scheduler section)."""
    return "scheduler.warmup_steps=" + override.split("=", 1)[1] if override.startswith("optim.warmup_steps=") else override


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def print_strategy_table(rows: list[dict]) -> None:
    from benchmarks.common import markdown_table

    r0 = rows[0]
    print(f"\nGPT with {r0['n_params'] / 1e6:.1f}M parameters, {r0['devices']} ranks, fp32 AdamW, CPU; MiB per rank "
          "above its baseline. measured: peak bytes malloc holds (rank 0; RSS in brackets); plan: trainer.plan's "
          "prediction; error: plan / measured - 1 (rank 0, and the worst of the ranks); formula: the ZeRO paper's "
          "params + grads + optimizer.\n")
    table = []
    for r in rows:
        for phase in PHASES:
            measured = [rk["peaks"][phase]["malloc"] for rk in r["ranks"]]
            rss = r["ranks"][0]["peaks"][phase]["rss"]
            plan = r["plan"][phase]["total"] + r.get("plan_host", 0.0)
            errors = [plan / m - 1 for m in measured]
            table.append([r["strategy"], phase, f"{_mib(measured[0])} ({_mib(rss)})", _mib(plan), f"{errors[0]:+.1%}",
                          f"{max(errors, key=abs):+.1%}", _mib(r["formula"]["total"])])
    print(markdown_table(["strategy", "phase", "measured malloc (RSS)", "plan", "error", "worst rank", "formula"], table))


def print_ac_table(rows: list[dict]) -> None:
    from benchmarks.common import markdown_table

    base = rows[0]
    base_mem = max(base["ranks"][0]["peaks"][p]["malloc"] for p in PHASES)
    base_t = base["ranks"][0]["median_step_s"]
    print("\nactivation checkpointing, 1 process, CPU fp32; peak bytes malloc holds above the baseline (MiB), "
          "the plan's peak, median step time\n")
    table = []
    for r in rows:
        mem = max(r["ranks"][0]["peaks"][p]["malloc"] for p in PHASES)
        plan = max(r["plan"][p]["total"] for p in PHASES)
        t = r["ranks"][0]["median_step_s"]
        table.append([r["activation_checkpointing"], _mib(mem), f"{mem / base_mem:.2f}", _mib(plan),
                      f"{plan / mem - 1:+.1%}", f"{t:.3f}", f"{t / base_t:.2f}"])
    print(markdown_table(["mode", "peak MiB", "memory ratio", "plan MiB", "plan error", "step s", "time ratio"], table))


if __name__ == "__main__":
    main()
