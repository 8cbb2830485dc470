"""How long a checkpoint save blocks the training loop: checkpoint.async=true against the synchronous save.

    python benchmarks/checkpoint_async.py                      # a 113M-parameter GPT, one CPU process
    python benchmarks/checkpoint_async.py --json docs/benchmarks/checkpoint_async_cpu.json

Both variants run the trainer's own path (compose, prepare_run, run_fit) in this process, the same
configuration but checkpoint.async, saving every `--every` steps. Per save: the time the loop was
blocked (CheckpointManager.save_seconds: for async, staging the state in host memory, plus any wait
for the previous save) and, for async, the background time until the checkpoint was published
(write, fsync, sha256 manifest, rename). The ratio is async blocked / sync blocked, per save, measured
in the same process run. Steps between saves are timed too: the background write competes with
training for the CPU here.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import StepClock, clock_callback, describe, machine, markdown_table, quiet, run_ours, write_json


def run(args, tmp: Path, asynchronous: bool) -> dict:
    checkpointer = {}

    import pytorch_lightning as pl

    class Grab(pl.Callback):  # the CheckpointManager, to read its per-save timings at the end
        def on_train_end(self, trainer, pl_module) -> None:
            from trainer.checkpoint.callback import CheckpointManager

            checkpointer["cm"] = next(cb for cb in trainer.callbacks if isinstance(cb, CheckpointManager))

    clock = StepClock(warmup=1, total=args.steps)
    overrides = [
        f"model.d_model={args.d_model}", f"model.n_layers={args.layers}", f"model.n_heads={args.d_model // 64}",
        f"model.seq_len={args.seq_len}", "data.batch_size=1", "data.val_batches=1", f"trainer.max_steps={args.steps}",
        "trainer.val_every_steps=100000", "trainer.progress_bar=false", "logger.wandb=false", "plan.check=off",
        f"checkpoint.every_n_steps={args.every}", "checkpoint.keep_last=2", f"checkpoint.async={str(asynchronous).lower()}",
        f"run.dir={tmp / ('async' if asynchronous else 'sync')}", f"paths.cache_dir={args.cache_dir}",
    ]
    run_ours(overrides, [clock_callback(clock), Grab()])
    cm = checkpointer["cm"]
    state_bytes = sum(p.stat().st_size for p in (tmp / ("async" if asynchronous else "sync") / "checkpoints").rglob("*")
                      if p.is_file())
    return {
        "async": asynchronous,
        "blocked_s": list(cm.save_seconds),
        "background_s": list(cm.saver.write_seconds) if cm.saver is not None else [],
        "median_step_s": clock.summary()["median_step_s"],
        "checkpoint_dir_bytes": state_bytes,
        "overrides": overrides[:-2],
    }


def n_params(args) -> int:
    import torch

    from trainer.models.gpt import GPT

    with torch.device("meta"):
        net = GPT(vocab_size=256, seq_len=args.seq_len, d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64)
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/trainer").expanduser()))
    ap.add_argument("--json")
    args = ap.parse_args()
    quiet()
    info = machine()
    print(describe(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sync = run(args, Path(tmp), asynchronous=False)
        asyn = run(args, Path(tmp), asynchronous=True)
    rows = []
    for i, (b_sync, b_async) in enumerate(zip(sync["blocked_s"], asyn["blocked_s"])):
        bg = asyn["background_s"][i] if i < len(asyn["background_s"]) else float("nan")
        rows.append([i + 1, f"{b_sync:.3f}", f"{b_async:.3f}", f"{bg:.3f}", f"{b_async / b_sync:.3f}"])
    print(f"\nGPT with {n_params(args) / 1e6:.1f}M parameters, a checkpoint of {sync['checkpoint_dir_bytes'] / 2**30 / 2:.2f} GiB "
          "(two kept), one CPU process; seconds")
    print(markdown_table(["save", "sync: blocked", "async: blocked", "async: background until published",
                          "async / sync blocked"], rows))
    med = statistics.median(b / s for b, s in zip(asyn["blocked_s"], sync["blocked_s"]))
    print(f"median blocked ratio async/sync: {med:.3f}; median step between saves: sync {sync['median_step_s']:.3f} s, "
          f"async {asyn['median_step_s']:.3f} s")
    write_json(args.json, {"machine": info, "args": vars(args), "n_params": n_params(args), "sync": sync, "async": asyn,
                           "median_blocked_ratio": med})


if __name__ == "__main__":
    main()
