"""Preemption is a flag, not a save in a signal handler.

SIGTERM (Kubernetes, torchrun shutting down, SLURM at the time limit), SIGUSR1 (SLURM's
warning signal, `--signal=USR1@T`, as launch.slurm asks for) and SIGUSR2 (submitit's, in Hydra
sweeps on SLURM) only record that a stop was asked for. At the next step boundary every rank
agrees (one tiny all-reduce MAX: if any rank was signalled, all stop), then all ranks save a
checkpoint together and exit with the requeue code. Under SLURM, launch.slurm's batch script
requeues the job; any other SLURM job (a Hydra submitit sweep, your own sbatch) is requeued by
rank 0 with `scontrol requeue` once every rank has saved (submitit's own handler, which would
requeue from rank 0 in the middle of a step, is replaced by the flag's).

The same check carries a second reason to stop: this job lost its run-dir lock to another job
(tracking/run_lock.py; rank 0 watches it). Then every rank stops at once, without saving (the run
dir is the other job's now), and raises the UserError that names the new holder (exit 2).

Before training starts there is nothing to save and maybe no step boundary to wait for (a rank
blocked in the process group's start-up on a peer that died, where Python signal handlers never
run: torchrun then SIGKILLed it 30 s after its SIGTERM). So until `arm()`, a watcher thread that
learns of signals through `signal.set_wakeup_fd` (written by the C-level handler, even while the
main thread is blocked) ends the process on SIGTERM at once, with the requeue code.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from trainer.errors import UserError

log = logging.getLogger("trainer")

# The exit code after a preemption checkpoint: launchers and batch scripts requeue on it.
REQUEUE_EXIT = 124
# What a rank brings to the step-boundary check; the all-reduce takes the MAX, so losing the run dir wins.
_CARRY_ON, _PREEMPTED, _RUN_DIR_LOST = 0, 1, 2


class PreemptionFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    # With several ranks on GPUs, the agreement of step s is read at step s + LAG_STEPS_ON_GPU: the
    # all-reduce and the copy of its result to pinned host memory run behind the step's GPU work, and by
    # the time the host reads them they have long finished, so the check never makes the host wait for
    # the GPU (reading it at once would, every step). Every rank reads the same step's result, so all
    # still stop at the same step, LAG_STEPS_ON_GPU steps later. On CPU (gloo) the all-reduce is
    # synchronous anyway: no lag.
    LAG_STEPS_ON_GPU = 2

    def __init__(self) -> None:
        self.signalled_at: float | None = None
        self.signal_name: str | None = None
        self._agreed = False
        self.armed = False  # training has started: a stop request waits for the next step boundary
        self._wakeup: tuple[socket.socket, socket.socket, int] | None = None
        self._pending: deque = deque()  # (pinned host flag, CUDA event) per step, oldest first
        # Rank 0: the error naming who took this job's run dir at a given step, or None (run_lock.LockWatch.lost).
        self.lost_run_dir: Callable[[int], str | None] | None = None

    def install(self) -> "PreemptionFlag":
        """Record SIGTERM/SIGUSR1 (main thread only); until `arm()`, SIGTERM also ends the process at once."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        if not self.armed and self._wakeup is None:
            self._watch_start_up()
        return self

    def arm(self) -> None:
        """Training has started: from here a stop request is saved at the next step boundary."""
        self.armed = True
        self.install()  # over Lightning's own SIGTERM handler (see keep_handlers_callback)
        if self._wakeup is not None:
            reader, writer, previous = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(previous)
            writer.close()  # the watcher's recv returns b"" and it ends
            reader.close()

    def _watch_start_up(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (reader, writer, previous)

        def watch() -> None:
            while True:
                try:
                    data = reader.recv(64)  # one byte per signal caught, its number
                except OSError:
                    return
                if not data:
                    return
                if signal.SIGTERM in data and not self.armed:
                    exit_now_in_start_up("SIGTERM")

        threading.Thread(target=watch, name="start-up-sigterm", daemon=True).start()

    def _handle(self, signum, _frame) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.time()
            self.signal_name = signal.Signals(signum).name

    def agreed(self, trainer) -> bool:
        """True on every rank once any rank has been signalled (checked at step boundaries). Raises
        UserError on every rank once rank 0 has seen another job take the run dir."""
        if self._agreed:
            return True
        lost = self.lost_run_dir(trainer.global_step) if self.lost_run_dir is not None else None
        local = _RUN_DIR_LOST if lost else _PREEMPTED if self.signalled_at is not None else _CARRY_ON
        if trainer.world_size > 1:
            local = self._exchange(trainer.strategy.root_device, local)
        if local == _RUN_DIR_LOST:
            raise UserError(lost or "the run dir was taken over by another job (rank 0 names it)", on_every_rank=True)
        if local:
            self._agreed = True
            if self.signalled_at is None:
                self.signalled_at = time.time()
            log.warning("preemption requested (%s): saving a checkpoint at step %d, then exiting to be requeued",
                        self.signal_name or "a peer rank's signal", trainer.global_step)
        return self._agreed

    def _exchange(self, device, local: int) -> int:
        """All-reduce MAX of this step's flag; on a GPU, returns the result of LAG_STEPS_ON_GPU steps ago."""
        import torch
        import torch.distributed as dist

        # torch.full fills on the device (a tensor built from a Python list would be a blocking host copy)
        flag = torch.full((1,), int(local), dtype=torch.int32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.device.type != "cuda":
            return int(flag.item())
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((host, done))
        if len(self._pending) <= self.LAG_STEPS_ON_GPU:
            return _CARRY_ON
        host, done = self._pending.popleft()
        done.synchronize()  # finished steps ago: returns at once
        return int(host.item())  # a host tensor: no device sync


def keep_handlers_callback(flag: PreemptionFlag):
    """A Lightning callback that puts the flag's handlers back once training starts.

    Lightning (2.6) installs its own SIGTERM handler when fit starts. That handler runs a
    `dist.broadcast` inside the signal handler, i.e. a collective at whatever point each rank
    happened to be, so the ranks deadlock (seen here: both ranks hung until torchrun killed them
    30 s later), and it then ends the run with SIGTERMException, without our checkpoint.
    """
    import pytorch_lightning as pl

    class KeepPreemptionHandlers(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            flag.arm()

    return KeepPreemptionHandlers()


def leave_requeue_marker() -> None:
    """Tell the batch script this job wants a requeue, in a file (every rank, before any exits).

    srun --kill-on-bad-exit kills the other tasks as soon as the first one exits 124, often while they
    are still exiting, and srun then reports the signal, not 124; the marker survives that.
    """
    marker = os.environ.get("TRAINER_REQUEUE_MARKER")
    if marker:
        try:
            Path(marker).touch()
        except OSError as e:
            log.warning("could not leave the requeue marker %s (%s): the batch script relies on exit code %d",
                        marker, e, REQUEUE_EXIT)


def exit_now_in_start_up(signal_name: str) -> None:
    """End a rank that was told to stop before training started: nothing new to save, exit for a requeue."""
    print(f"{signal_name} before training started: nothing to save yet; exiting with code {REQUEUE_EXIT} (requeue)",
          file=sys.stderr, flush=True)
    from trainer.distributed.spawn import record_exit

    leave_requeue_marker()
    record_exit(REQUEUE_EXIT)
    os._exit(REQUEUE_EXIT)  # no teardown: the process group may be half-built, with a peer gone


def requeue_slurm_job(rank: int, env=os.environ) -> bool:
    """Rank 0 of a SLURM job that launch.slurm's batch script does not watch: `scontrol requeue` this job
    (called after every rank has saved). True if it was requeued here."""
    job = env.get("SLURM_JOB_ID")
    if rank != 0 or not job or env.get("TRAINER_REQUEUE_BY") == "batch":
        return False
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not requeue SLURM job %s (%s): resubmit it to resume from the checkpoint", job, e)
        return False
    if out.returncode != 0:
        log.warning("scontrol requeue %s failed (%s): resubmit it to resume from the checkpoint", job,
                    (out.stderr or out.stdout).strip())
        return False
    log.warning("requeued SLURM job %s: it resumes from this checkpoint", job)
    return True
