"""Start N local ranks under torchrun from the frozen config (never by re-running argv under Hydra)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.distributed.preemption import REQUEUE_EXIT
from trainer.errors import STORAGE_ERROR_EXIT, USER_ERROR_EXIT
from trainer.tracking.run_dir import RunDir

# The self-launched ranks kept failing (crashed, or were killed) after launcher.max_restarts restarts: their
# logs say why. 70 is EX_SOFTWARE; distinct from 2 (fix the config), 74 (free storage), 75 (a node cut off)
# and 124 (preempted: requeue).
RANKS_FAILED_EXIT = 70
# Clean exits of a rank that a restart would only repeat.
NO_RESTART_EXITS = (USER_ERROR_EXIT, STORAGE_ERROR_EXIT)
EXIT_RECORDS_ENV = "TRAINER_EXIT_RECORDS"

# torchrun forwards these to its workers (its --signals-to-handle, read from PET_SIGNALS_TO_HANDLE).
# SIGUSR1 (SLURM's warning signal) is added to torch's default list: without it, USR1 sent to this
# launcher killed torchrun outright (its default action) and orphaned the workers, with no checkpoint.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def torchrun_command(frozen_config: Path, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "trainer.distributed.local_torchrun",  # torchrun, without its traceback
        "--standalone", f"--nproc_per_node={nproc}", "--max_restarts=0",
        "-m", "trainer.fit", str(frozen_config),
    ]


def relaunch_local(frozen_config: Path, nproc: int, run_id: str, max_restarts: int = 0,
                   lock_token: str | None = None) -> int:
    """Run the ranks; when they fail, start them again from the newest checkpoint, up to `max_restarts`
    times. Returns 0, REQUEUE_EXIT (preempted), the code of a rank's clean error exit (2: a user error,
    STORAGE_ERROR_EXIT), or RANKS_FAILED_EXIT once the restarts are used up. SIGTERM/SIGINT/SIGUSR1
    are passed on, and end the job without a restart. `lock_token`: this launcher's run-dir lock, which
    the ranks' rank 0 watches (tracking/run_lock.py)."""
    signalled: list[int] = []
    for attempt in range(max_restarts + 1):
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="trainer-exits-") as records:
            code = _run_torchrun(frozen_config, nproc, run_id, Path(records), signalled, lock_token)
            clean_exits = _read_exit_records(Path(records))
        if code == 0:
            return 0
        if ended_preempted(frozen_config.parent, since=started):
            return REQUEUE_EXIT
        if signalled:  # told to stop: the ranks saved (or had nothing new to save) and exited
            return REQUEUE_EXIT if signalled[0] in (signal.SIGTERM, signal.SIGUSR1) else code
        final = sorted({c for c in clean_exits.values() if c in NO_RESTART_EXITS})
        if final:  # a user error or full storage: the same again on a restart
            return final[0]
        lost = sorted(set(range(nproc)) - set(clean_exits)) or "?"
        if attempt < max_restarts:
            print(f"warning: the ranks failed (no clean exit from rank(s) {lost} of {nproc}; torchrun exit {code}, see above); "
                  "restarting the ranks "
                  f"from the newest valid checkpoint (restart {attempt + 1} of launcher.max_restarts={max_restarts})",
                  file=sys.stderr, flush=True)
    print(f"error: the ranks failed {max_restarts + 1} time(s) (launcher.max_restarts={max_restarts}); the last time "
          f"no clean exit from rank(s) {lost} of {nproc}. Their logs: {RunDir(frozen_config.parent).logs}. "
          f"Exiting with code {RANKS_FAILED_EXIT}.",
          file=sys.stderr, flush=True)
    return RANKS_FAILED_EXIT


def _run_torchrun(frozen_config: Path, nproc: int, run_id: str, records: Path, signalled: list[int],
                  lock_token: str | None = None) -> int:
    from trainer.distributed.env import cpu_threads_per_rank
    from trainer.tracking.run_lock import TOKEN_ENV

    env = dict(os.environ)
    env["TRAINER_RUN_ID"] = run_id
    if lock_token:
        env[TOKEN_ENV] = lock_token
    env[EXIT_RECORDS_ENV] = str(records)
    env["OMP_NUM_THREADS"] = str(cpu_threads_per_rank(nproc))  # a user's OMP_NUM_THREADS is kept (it is per process)
    env.setdefault("PET_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    proc = subprocess.Popen(torchrun_command(frozen_config, nproc), env=env)

    def forward(signum, _frame):
        signalled.append(signum)
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def record_exit(code: int) -> None:
    """A rank started by relaunch_local leaves its exit code, so the launcher can tell a clean error
    exit (no restart) from a rank that died (restart); torchrun itself reports only "failed"."""
    records = os.environ.get(EXIT_RECORDS_ENV)
    if records:
        try:
            (Path(records) / f"rank{os.environ.get('RANK', '0')}").write_text(str(code))
        except OSError:
            pass  # the launcher then restarts, as for a rank that died


def _read_exit_records(records: Path) -> dict[int, int]:
    out = {}
    for p in records.glob("rank*"):
        try:
            out[int(p.name[4:])] = int(p.read_text())
        except ValueError:
            continue
    return out


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
