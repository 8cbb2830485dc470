"""Tiny real training runs for the lifecycle tests (the real CLI, a few steps of a ~10k-parameter GPT)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import cli

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32", "data.batch_size=4",
        "data.val_batches=2", "trainer.val_every_steps=10", "trainer.log_every_steps=5", "checkpoint.every_n_steps=10",
        "trainer.progress_bar=false", "logger.wandb=false", "scheduler.warmup_steps=2"]
EVAL = ["promote.eval_max_tokens=4096"]  # the same first 4096 validation tokens for candidate and champion


def ok(proc, code: int = 0):
    assert proc.returncode == code, f"exit {proc.returncode} (wanted {code})\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def train(run_dir: Path, cache: Path, steps: int, *extra: str) -> Path:
    ok(cli("trainer.train", *TINY, f"run.dir={run_dir}", f"paths.cache_dir={cache}", f"trainer.max_steps={steps}", *extra))
    return run_dir


def promote(*args: str, runs_dir: Path, timeout: int = 600):
    return cli("trainer.promote", *args, f"paths.runs_dir={runs_dir}", timeout=timeout)
