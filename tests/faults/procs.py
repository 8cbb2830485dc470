"""Real processes for the fault tests: start with a hard timeout, wait on files and log lines, find
ranks, and always clean up by PID (torchrun's workers run in sessions of their own, so killing a
process group is not enough: every descendant is collected first)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psutil

ROOT = Path(__file__).resolve().parents[2]

# A tiny GPT (d_model 32, 1 layer, seq 16) that trains a step in milliseconds; a delay per micro-batch in
# the loader stretches steps so a signal or a kill reliably lands mid-run.
TINY = [
    "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=16",
    "data.batch_size=4", "data.val_batches=2", "trainer.log_every_steps=1", "trainer.progress_bar=false",
]


def env(**extra: str) -> dict[str, str]:
    base = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    return {**base, **extra}


class Job:
    """A command running in its own session, output to a log file, with a hard deadline."""

    def __init__(self, argv: list[str], log: Path, *, env_vars: dict[str, str] | None = None, timeout_s: float = 240,
                 cwd: Path = ROOT):
        self.argv, self.log_path, self.timeout_s = argv, Path(log), timeout_s
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env_vars or env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 6000) -> str:
        return f"--- {self.log_path} (exit {self.proc.poll()})\n{self.output()[-n:]}"

    def wait(self, timeout_s: float | None = None) -> int:
        left = (timeout_s if timeout_s is not None else self.timeout_s) - (time.monotonic() - self.started)
        try:
            return self.proc.wait(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv[:6]}... did not finish within {self.timeout_s} s\n{self.tail()}") from None

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL this job and every process under it, by PID."""
        victims = self.descendants()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


@contextmanager
def jobs() -> Iterator[list[Job]]:
    """A list to put Jobs in; every one is killed (with its descendants) on the way out, whatever happened."""
    started: list[Job] = []
    try:
        yield started
    finally:
        for job in started:
            job.kill()


def wait_for(what: str, predicate: Callable[[], object], timeout_s: float, *, job: Job | None = None,
             poll_s: float = 0.05):
    """Poll until predicate() is truthy; fail early (with the log) if the job ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if job is not None and job.proc.poll() is not None:
            value = predicate()
            if value:
                return value
            raise AssertionError(f"the job ended before {what}\n{job.tail()}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f"\n{job.tail()}" if job else ""))


def rank_pids(job: Job, script: str = "trainer") -> dict[int, int]:
    """{global rank: pid} of the job's training processes (read from their environment)."""
    out = {}
    for p in job.descendants():
        try:
            cmd, environ = " ".join(p.cmdline()), p.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if script in cmd and "RANK" in environ and "torch.distributed.run" not in cmd:
            out[int(environ["RANK"])] = p.pid
    return out


def python_m(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if re.fullmatch(r"step-\d{8}", p.name) and (p / "manifest.json").is_file())


def logged_losses(run_dir: Path) -> dict[int, float]:
    """{step: train/loss} from the CSV log (rows of every session, in order; a repeated step keeps the last)."""
    path = run_dir / "csv" / "metrics.csv"
    rows = list(csv.DictReader(open(path))) if path.is_file() else []
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "csv" / "metrics.csv"
    rows = list(csv.DictReader(open(path))) if path.is_file() else []
    return [int(r["step"]) for r in rows if r.get("train/loss")]


def model_state(ckpt_dir: Path) -> dict:
    import torch

    return torch.load(ckpt_dir / "state.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
