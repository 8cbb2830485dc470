"""Start N local ranks under torchrun from the frozen config (never by re-running argv under Hydra)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.distributed.preemption import REQUEUE_EXIT
from trainer.tracking.run_dir import RunDir

# torchrun forwards these to its workers (its --signals-to-handle, read from PET_SIGNALS_TO_HANDLE).
# SIGUSR1 (SLURM's warning signal) is added to torch's default list: without it, USR1 sent to this
# launcher killed torchrun outright (its default action) and orphaned the workers, with no checkpoint.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def torchrun_command(frozen_config: Path, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc_per_node={nproc}", "--max_restarts=0",
        "-m", "trainer.fit", str(frozen_config),
    ]


def relaunch_local(frozen_config: Path, nproc: int, run_id: str) -> int:
    """Run the ranks and return torchrun's exit code. SIGTERM/SIGINT/SIGUSR1 are passed on."""
    env = dict(os.environ)
    env["TRAINER_RUN_ID"] = run_id
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PET_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    started = time.time()
    proc = subprocess.Popen(torchrun_command(frozen_config, nproc), env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if code != 0 and ended_preempted(frozen_config.parent, since=started):
        return REQUEUE_EXIT
    return code


def ended_preempted(run_dir: Path, since: float) -> bool:
    """Whether this session's ranks stopped for a preemption, with their checkpoint saved.

    torchrun reports any non-zero worker exit (the ranks exit REQUEUE_EXIT after a preemption
    checkpoint) as a failure, exit 1; the ranks' own account is rank 0's manifest summary.
    """
    path = RunDir(run_dir).manifest
    try:
        if path.stat().st_mtime < since:
            return False  # written by an earlier session
        summary = json.loads(path.read_text()).get("summary") or {}
    except (OSError, ValueError):
        return False
    return summary.get("stopped") == "preempted" and summary.get("last_checkpoint") is not None
