"""Start N local ranks under torchrun from the frozen config (never by re-running argv under Hydra)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


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
    proc = subprocess.Popen(torchrun_command(frozen_config, nproc), env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
