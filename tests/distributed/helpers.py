"""Running the real CLI with a tiny GPT on 1 or 2 CPU processes, and reading what it logged."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from tests.conftest import cli

TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.seq_len=16",
    "data.batch_size=4", "data.val_batches=2", "trainer.val_every_steps=100", "trainer.log_every_steps=1",
    "trainer.progress_bar=false", "logger.wandb=false", "scheduler.warmup_steps=1", "optim.lr=1e-2",
    "checkpoint.every_n_steps=4",
]
# DeepSpeed JIT-builds C++ ops on first use; keep the build across test sessions (torch rebuilds
# it by itself when the sources or versions change).
EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path("~/.cache/trainer/torch_extensions").expanduser())


def train(run_dir: Path, cache: Path, *extra: str, timeout: int = 600):
    return cli("trainer.train", *TINY, f"run.dir={run_dir}", f"paths.cache_dir={cache}", *extra,
               env={"TORCH_EXTENSIONS_DIR": EXTENSIONS}, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by optimizer step, from the CSV log (logged every step)."""
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def assert_same_curve(got: dict[int, float], want: dict[int, float], rel: float, steps=None) -> None:
    steps = sorted(want) if steps is None else steps
    assert [s for s in steps if s not in got] == [], f"missing steps: got {sorted(got)}"
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in steps)
    assert worst <= rel, "loss curves differ: " + ", ".join(f"{s}: {got[s]:.7f} vs {want[s]:.7f}" for s in steps)
