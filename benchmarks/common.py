"""What the benchmarks share: one step clock for every variant, the three ways to train
(hand-written loop, plain Lightning, our trainer's real fit path), and the machine's name.

Every benchmark prints ratios against a baseline measured in the same process run: absolute
times from a shared 2-core CPU or from different machines are not comparable.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks (TFLOP/s), used only when trainer.observability.peaks is absent.
_FALLBACK_BF16_PEAK = {"h100": 989.4, "h200": 989.4, "a100": 312.0}


# --------------------------------------------------------------------------- the machine
def machine() -> dict[str, Any]:
    """CPU model and cores, GPU name, library versions and the date: printed with every table."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    with contextlib.suppress(Exception):
        import pytorch_lightning as pl

        info["pytorch_lightning"] = pl.__version__
    load = load_avg()
    if load is not None:
        info["load_avg_1m"] = load
    return info


def load_avg() -> float | None:
    """The 1-minute load average: on a shared machine, what a figure was measured under (None where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def describe(info: dict[str, Any]) -> str:
    where = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores)"
    load = f", load avg {info['load_avg_1m']}" if "load_avg_1m" in info else ""
    return f"{where}; {info['date']}; python {info['python']}, torch {info['torch']}{load}"


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU, from the observability table when it is there."""
    try:
        from trainer.observability.peaks import peak_for

        return peak_for(device_name, "bf16").tflops
    except ImportError:
        name = device_name.lower()
        return next((v for k, v in _FALLBACK_BF16_PEAK.items() if k in name), None)


# --------------------------------------------------------------------------- the clock
@dataclass
class StepClock:
    """Wall and process-CPU time at the end of every optimizer step.

    Steps 1..warmup are left out (compilation, allocator and cache warm-up). On CUDA the clock
    synchronises once at the end of the warm-up and once at the last step, so the window mean
    is exact throughput; the per-step intervals in between are host timestamps, which in the
    steady state follow the device (the launch queue is full). The same clock, with the same
    synchronisations, times every variant.
    """

    warmup: int
    total: int
    cuda: bool = False
    first_step_s: float | None = None  # from start() to the end of step 1 (compilation included)
    wall: list[float] = field(default_factory=list)  # per-step seconds after warm-up
    cpu: list[float] = field(default_factory=list)  # per-step process CPU seconds (all threads)
    # Where the training (main) thread's wall time went, per step: on a CPU (its own CPU time),
    # waiting for a CPU (run queue: other threads and processes had it) or neither (blocked: I/O,
    # a lock, the GIL, a device sync). wall = thread_cpu + runqueue + blocked.
    thread_cpu: list[float] = field(default_factory=list)
    runqueue: list[float] = field(default_factory=list)  # empty where /proc/thread-self/schedstat is missing
    window_s: float | None = None  # synchronised wall time of steps warmup+1..total
    window_tree_cpu_s: float | None = None  # CPU time of this process and its children over the window
    peak_mem_gib: float | None = None
    checkpoint_save_s: list[float] = field(default_factory=list)
    _t_start: float = 0.0
    _last: tuple[float, ...] | None = None
    _window_t0: float = 0.0
    _window_cpu0: float = 0.0
    _seen: int = 0

    def start(self) -> None:
        self._t_start = time.perf_counter()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def mark(self, step: int) -> None:
        """Call once the optimizer step number `step` (1-based) has been issued."""
        if step <= self._seen:  # accumulation micro-steps report the same global step
            return
        self._seen = step
        if step == self.warmup or step == self.total:
            self._sync()
        now = (time.perf_counter(), time.process_time(), time.thread_time(), runqueue_s())
        if step == 1:
            self.first_step_s = now[0] - self._t_start
        if step > self.warmup and self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
            self.thread_cpu.append(now[2] - self._last[2])
            if now[3] is not None and self._last[3] is not None:
                self.runqueue.append(now[3] - self._last[3])
        if step == self.warmup:
            self._window_t0, self._window_cpu0 = now[0], tree_cpu_s()
        if step == self.total:
            self.window_s = now[0] - self._window_t0
            self.window_tree_cpu_s = tree_cpu_s() - self._window_cpu0
            if self.cuda:
                import torch

                self.peak_mem_gib = torch.cuda.max_memory_allocated() / 2**30
        self._last = now

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @property
    def timed_steps(self) -> int:
        return self.total - self.warmup

    def summary(self) -> dict[str, Any]:
        if not self.wall:
            raise RuntimeError(f"no timed steps: ran {self._seen} of {self.total} (warm-up {self.warmup})")
        return {
            "median_step_s": statistics.median(self.wall),
            "median_cpu_step_s": statistics.median(self.cpu),
            "mean_step_s": (self.window_s or sum(self.wall)) / self.timed_steps,
            "mean_tree_cpu_step_s": (self.window_tree_cpu_s or 0.0) / self.timed_steps,
            "first_step_s": self.first_step_s,
            "timed_steps": self.timed_steps,
            "peak_mem_gib": self.peak_mem_gib,
            "checkpoint_save_s": list(self.checkpoint_save_s),
            "step_s": list(self.wall),
            "cpu_step_s": list(self.cpu),
            "thread_cpu_step_s": list(self.thread_cpu),
            "runqueue_step_s": list(self.runqueue),
            "wall_split": wall_split(self.wall, self.thread_cpu, self.runqueue),
        }


def runqueue_s() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat), or None."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def wall_split(wall: list[float], thread_cpu: list[float], runqueue: list[float]) -> dict[str, float | None]:
    """Mean per-step split of the main thread's wall time: its own CPU, waiting in the run queue,
    and blocked (the rest)."""
    if not wall:
        return {"thread_cpu_s": None, "runqueue_s": None, "blocked_s": None}
    n = len(wall)
    cpu = sum(thread_cpu) / n
    rq = sum(runqueue) / n if len(runqueue) == n else None
    return {"thread_cpu_s": cpu, "runqueue_s": rq, "blocked_s": (sum(wall) / n - cpu - rq) if rq is not None else None}


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and all its live children: loader workers and
    W&B's service process do work for the run that the process's own CPU time leaves out."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def clock_callback(clock: StepClock):
    """The Lightning callback that drives a StepClock (appended after every other callback, so a
    step's timestamp includes all the framework's per-step hooks)."""
    import pytorch_lightning as pl

    class ClockCallback(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.mark(trainer.global_step)

        def on_train_end(self, trainer, pl_module) -> None:
            # Runs after the checkpoint callback's on_train_end (the final save).
            for cb in trainer.callbacks:
                clock.checkpoint_save_s.extend(getattr(cb, "save_seconds", []) or [])

    return ClockCallback()


# --------------------------------------------------------------------------- configs and builds
def compose(overrides: Sequence[str]):
    """The validated run config, exactly as `python -m trainer.train <overrides>` composes it."""
    from trainer.config import compose_config

    return compose_config(list(overrides))


def build_data(cfg):
    """The configured data module, shards built (or found in the cache) and opened."""
    from trainer.build import build_datamodule

    return build_datamodule(cfg.data)


def build_net_and_module(cfg, datamodule):
    """The same net (seeded as run_fit seeds it) and LightningModule our trainer builds, through
    the trainer's public builders (one process, so the single-process strategy plan)."""
    import pytorch_lightning as pl

    from trainer.build import build_model, build_module, build_plan, resolve_device

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net, _ = build_model(cfg.model, datamodule)
    plan = build_plan(cfg, net, resolve_device(cfg.trainer), world_size=1)
    return net, build_module(cfg, net, plan)


def run_ours(overrides: Sequence[str], callbacks: Sequence[Any]) -> int:
    """`python -m trainer.train <overrides>` in this process (one process, no launcher), with
    extra callbacks: compose, then the trainer's own run preparation (validate, run dir, frozen
    config, manifest) and run_fit."""
    from trainer.fit import run_fit
    from trainer.prepare import prepare_run, resolved

    cfg = compose(overrides)
    run = prepare_run(cfg, ["benchmarks", *overrides], launcher_label="benchmark")
    try:
        return run_fit(resolved(cfg), run.dir, run.id, extra_callbacks=list(callbacks))
    finally:
        run.release()  # as train does: the lock's heartbeat stops before the caller removes the run dir


def plain_lightning_trainer(*, device: str, precision: str, max_steps: int, gradient_clip_val: float, callbacks: list):
    """A plain pl.Trainer: nothing of ours, no logger, checkpointing, progress bar or validation."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=max_steps,
        gradient_clip_val=gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
    )


def schedule_factor(cfg):
    """The run's LR schedule as a factor per step (the hand-written loop applies it itself): the
    `scheduler` section's own scheduler, built on a throwaway optimizer with lr 1."""
    import torch
    from hydra.utils import instantiate

    if cfg.get("scheduler") is None:
        return lambda step: 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate(cfg.scheduler)(opt)
    return lambda step: scheduler.lr_lambdas[0](step) if hasattr(scheduler, "lr_lambdas") else 1.0


# --------------------------------------------------------------------------- the hand-written loop
def handwritten_train(
    net,
    *,
    train_tokens,
    batch_size: int,
    seq_len: int,
    steps: int,
    device: str,
    bf16: bool,
    lr: float,
    lr_factor,
    weight_decay: float,
    betas: Sequence[float],
    eps: float,
    grad_clip: float,
    clock: StepClock,
    compile: bool = False,
    compile_mode: str = "default",
    log_every: int = 10,
    seed: int = 1337,
) -> float:
    """nanoGPT's train.py loop, reduced to one process: random windows from the memory-mapped
    token file (pinned, copied asynchronously, the next batch prepared while the device works),
    autocast bf16 on CUDA, AdamW (fused on CUDA) with decay on matrices only, global-norm
    clipping, the loss read back every `log_every` steps. Returns the last logged loss."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    cuda = device == "cuda"

    def get_batch():
        ix = rng.integers(0, len(train_tokens) - seq_len - 1, size=batch_size)
        w = torch.from_numpy(np.stack([train_tokens[i : i + seq_len + 1] for i in ix]).astype(np.int64))
        x, y = w[:, :-1], w[:, 1:]
        if cuda:
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    model = net.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=cuda or None)
    if compile:
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and bf16) else contextlib.nullcontext()
    model.train()
    lossf = float("nan")
    clock.start()
    x, y = get_batch()
    for it in range(steps):
        for g in optimizer.param_groups:
            g["lr"] = lr * lr_factor(it)
        with autocast:
            loss = model(x, y)
        x, y = get_batch()  # prefetch while the device runs the forward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % log_every == 0:
            lossf = loss.item()
        clock.mark(it + 1)
    return lossf


# --------------------------------------------------------------------------- output
def write_json(path: str | Path | None, data: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def quiet() -> None:
    """Keep benchmark output to the tables: Lightning's and W&B's advice is for interactive runs."""
    import logging
    import warnings

    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
