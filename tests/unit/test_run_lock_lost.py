"""A holder whose run-dir lock another job took (tracking/run_lock.py): its watch names the new holder
within a heartbeat, and the step-boundary check (distributed/preemption.py) then ends the run with that
message on every rank instead of training on. The new holder is a real second process taking the lock
the way a requeue of the same job id does (`acquire`); the check's all-reduce runs in a real gloo group.
The end-to-end runs are in tests/faults/test_run_dir_lock.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from tests.conftest import ROOT
from trainer.distributed.preemption import PreemptionFlag
from trainer.errors import UserError
from trainer.tracking import run_lock

JOB = "slurm-4242"
TAKE_OVER = f"""
import os, sys
from trainer.tracking.run_lock import acquire
lock = acquire(sys.argv[1], job_id={JOB!r}, stale_after_s=4)
print(os.getpid(), flush=True)
os._exit(0)  # keeps the lock (no release at exit), as a job that is still running
"""


@pytest.fixture
def one_rank_group(tmp_path):
    """A real one-process gloo group; the trainer below says world_size 2, so the check takes its multi-rank path."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def trainer(step: int, world_size: int):
    return SimpleNamespace(world_size=world_size, global_step=step, strategy=SimpleNamespace(root_device=torch.device("cpu")))


def take_over(path) -> int:
    out = subprocess.run([sys.executable, "-c", TAKE_OVER, str(path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[0])


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_lock_taken_over_stops_the_run_at_the_next_step_naming_the_new_holder(tmp_path, world_size, one_rank_group):
    path = tmp_path / "lock.json"
    lock = run_lock.acquire(path, job_id=JOB, stale_after_s=4)  # looks every 0.5 s
    try:
        flag = PreemptionFlag()
        flag.lost_run_dir = run_lock.watch(path, stale_after_s=4).lost
        assert run_lock.watch(path, stale_after_s=4) is lock  # this process holds it: its own heartbeat watches
        assert flag.agreed(trainer(3, world_size)) is False  # held: training goes on

        other = take_over(path)
        deadline = time.monotonic() + 10
        while lock.taken_by is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(UserError) as raised:
            flag.agreed(trainer(7, world_size))
        message = str(raised.value)
        assert re.fullmatch(
            rf"run dir {re.escape(str(tmp_path))} was taken over by another job \(host \S+, PID {other}, job id {JOB}, "
            r"since [\d\-: ]+\) while this job ran: this job stopped at step 7 without saving, .*run.lock_stale_after_s.*",
            message), message
        assert raised.value.exit_code == 2 and raised.value.on_every_rank
        assert f'"pid": {other}' in path.read_text()  # the new holder's lock is left alone, also at release
    finally:
        lock.release()
    assert f'"pid": {other}' in path.read_text()


def test_self_launched_ranks_watch_their_launchers_lock_by_its_token(tmp_path, monkeypatch):
    path = tmp_path / "lock.json"
    lock = run_lock.acquire(path, job_id=JOB, stale_after_s=4)
    try:
        run_lock._HELD.clear()  # as in a rank: the launcher, another process, holds it
        assert run_lock.watch(path, stale_after_s=4) is None  # no token: nothing to watch
        monkeypatch.setenv(run_lock.TOKEN_ENV, lock.holder.token)
        watch = run_lock.watch(path, stale_after_s=4)
        time.sleep(1.2)
        assert watch.lost(5) is None
        other = take_over(path)
        deadline = time.monotonic() + 10
        while watch.lost(5) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"another job (host {os.uname().nodename}, PID {other}, job id {JOB}" in (watch.lost(5) or "")
    finally:
        lock.release()
