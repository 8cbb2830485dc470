"""Cost of always-on observability: step time with PerfMonitor on vs off, default model.

    python benchmarks/observability_overhead.py [--steps 30] [--rounds 3] [--device cpu|cuda] [--data synthetic]

The default experiment's model and data (GPT 0.9M on stdlib bytes, seq 256, batch 16) are
trained for `--steps` steps with and without PerfMonitor, alternating on/off for `--rounds`
rounds so that drift in machine load hits both alike. Reported:
  * step-time ratio on/off (median over rounds of the per-round ratio of median step times);
  * on CPU, the process's CPU time per step on/off (all threads: the sampler thread counts),
    which other processes' load barely moves;
  * time spent inside PerfMonitor's hooks per step, as a share of the step: the direct cost,
    which does not drown in the noise of a shared machine the way an A/B difference can.
The monitor runs exactly as in training (run dir files, NVML/psutil sampler thread, CSV
logging, straggler exchange and verdict at their default intervals).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from trainer.data import TokenDataModule
from trainer.models.gpt import GPT, GPTConfig
from trainer.module import TrainModule
from trainer.config import ObservabilityConfig
from trainer.observability import PerfMonitor

HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_train_batch_end")


class RandomTokens(pl.LightningDataModule):
    """In-memory random bytes in the default data's shape (--data synthetic: no corpus build)."""

    vocab_size = 256

    def __init__(self, steps: int, seq_len: int = 256, batch_size: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, self.vocab_size, (steps * batch_size, seq_len + 1), generator=g)
        self.batch_size = batch_size

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(self.tokens[:, :-1], self.tokens[:, 1:]), batch_size=self.batch_size)


class SteadyStateClock(pl.Callback):
    """Per-step wall time after `warmup` steps (one clock read per step, in both arms alike).

    The median step is reported: on a shared machine a neighbour's burst lands on a few
    steps, and the median ignores them where a mean would not.
    """

    def __init__(self, warmup: int):
        self.warmup, self.last, self.durations, self.cpu_durations = warmup, None, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = (time.perf_counter(), time.process_time())
        if trainer.global_step > self.warmup and self.last is not None:
            self.durations.append(now[0] - self.last[0])
            self.cpu_durations.append(now[1] - self.last[1])
        self.last = now

    @property
    def step_s(self) -> float:
        return statistics.median(self.durations)

    @property
    def cpu_step_s(self) -> float:
        """CPU seconds of this process (all threads, the sampler's included) per step: on a
        shared machine this barely moves with the neighbours' load, unlike wall time."""
        return statistics.median(self.cpu_durations)


def instrument(monitor: PerfMonitor) -> dict:
    """Accumulate the time spent inside the monitor's per-step hooks."""
    spent = {"s": 0.0}
    for name in HOOKS:
        original = getattr(monitor, name)

        @functools.wraps(original)
        def timed(*args, _original=original, **kwargs):
            t = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - t

        setattr(monitor, name, timed)
    return spent


def run_once(data: pl.LightningDataModule, steps: int, warmup: int, observe: bool, device: str, workdir: Path) -> tuple[float, float, float]:
    pl.seed_everything(0, verbose=False)
    net = GPT(GPTConfig(vocab_size=data.vocab_size, seq_len=256, d_model=128, n_layers=4, n_heads=4))
    module = TrainModule(net, lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8, warmup_steps=20,
                         schedule="cosine", min_lr_ratio=0.1, max_steps=steps)
    clock = SteadyStateClock(warmup)
    callbacks: list = [clock]
    spent = {"s": 0.0}
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    if observe:
        cfg = vars(ObservabilityConfig())
        monitor = PerfMonitor(run_dir / "perf", net.flops_per_token(), 256, log_every_n_steps=10, **cfg)
        spent = instrument(monitor)
        callbacks.insert(0, monitor)
    trainer = pl.Trainer(accelerator=device, devices=1, max_steps=steps, precision="bf16-mixed" if device == "cuda" else "32-true",
                         callbacks=callbacks, logger=pl.loggers.CSVLogger(run_dir, name="csv", version=""),
                         log_every_n_steps=10, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)
    hooks_per_step = spent["s"] / steps
    return clock.step_s, clock.cpu_step_s, hooks_per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    ap.add_argument("--data", choices=("stdlib", "synthetic"), default="stdlib",
                    help="stdlib: the default experiment's corpus (built once); synthetic: random bytes in memory")
    ap.add_argument("--cache-dir", default=str(Path(os.environ.get("TRAINER_CACHE", "~/.cache/trainer"), "data").expanduser()))
    args = ap.parse_args()
    import logging

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        data: pl.LightningDataModule = RandomTokens(args.steps)
    else:
        data = TokenDataModule(path="stdlib", tokenizer="byte", seq_len=256, batch_size=16, cache_dir=args.cache_dir)
        data.prepare_data()
        data.setup("fit")
    on, off, cpu_on, cpu_off, hooks = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)  # ABBA: drift hits both alike
            for observe in order:
                step_s, cpu_s, hook_s = run_once(data, args.steps, args.warmup, observe, args.device, Path(tmp))
                (on if observe else off).append(step_s)
                (cpu_on if observe else cpu_off).append(cpu_s)
                if observe:
                    hooks.append(hook_s / step_s)
                print(f"round {r} observability={'on ' if observe else 'off'}: {1000 * step_s:8.2f} ms/step wall, "
                      f"{1000 * cpu_s:8.2f} ms/step CPU" + (f"  (hooks {1e6 * hook_s:.0f} us/step)" if observe else ""),
                      flush=True)
    med = statistics.median
    # Each round ran on and off back to back: the ratio within a round cancels the machine's
    # load drift between rounds; the median over rounds drops the rounds a burst hit.
    ratio = med(a / b for a, b in zip(on, off))
    print(f"\ndevice {args.device}, {args.steps} steps x {args.rounds} rounds, default model (GPT 0.9M, seq 256, batch 16)")
    print(f"wall step time on/off: {1000 * med(on):.2f} / {1000 * med(off):.2f} ms (medians);"
          f" median per-round ratio {ratio:.4f} ({100 * (ratio - 1):+.2f}%)")
    if args.device == "cpu":
        cpu_ratio = med(a / b for a, b in zip(cpu_on, cpu_off))
        print(f"process CPU time per step on/off: {1000 * med(cpu_on):.2f} / {1000 * med(cpu_off):.2f} ms (medians);"
              f" median per-round ratio {cpu_ratio:.4f} ({100 * (cpu_ratio - 1):+.2f}%)")
    print(f"time inside PerfMonitor hooks: {100 * med(hooks):.3f}% of each step (median of rounds)")


if __name__ == "__main__":
    main()
