"""Preemption exits right after its checkpoint (issue 13, item 7): no validation pass first (Lightning
validates whenever a callback stops training: seconds of a short grace period, and validation rows at a
step the schedule never asked for). One process, SIGTERM mid-run."""
from __future__ import annotations

import csv
import json
import os
import signal
import time

import pytest

from tests.faults import procs

pytestmark = pytest.mark.slow
REQUEUE_EXIT = 124
# 3x the slowest fixed exit in docs/reliability.md (6.6 s, load 12); 9.7 s was seen at load 9 since. On this
# shared machine no time bound separates the fixed exit from one with a validation pass (14.8 s): the rows
# below catch that; the bound catches an exit that waits on something (a hang, a timeout).
EXIT_BOUND_S = 20


def test_preempted_run_exits_after_the_save_without_validating(tmp_path, shared_cache):
    run = tmp_path / "run"
    # Validation every 5 steps over 50 batches: a pass takes seconds, and would land at the stop step.
    argv = procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                          "trainer.max_steps=400", "checkpoint.every_n_steps=4", "trainer.val_every_steps=5",
                          "data.val_batches=50", "logger.wandb=false", "+data.batch_delay_s=0.05")
    with procs.jobs() as started:
        job = procs.Job(argv, tmp_path / "job.log", timeout_s=300)
        started.append(job)
        procs.wait_for("checkpoint step 8", lambda: max(procs.checkpoint_steps(run) or [0]) >= 8, 240, job=job)
        os.kill(job.pid, signal.SIGTERM)
        signalled = time.monotonic()
        assert job.wait() == REQUEUE_EXIT, job.tail()
        exit_s = time.monotonic() - signalled
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    stop = summary["last_checkpoint"]
    assert summary["stopped"] == "preempted" and stop in procs.checkpoint_steps(run)
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    val_steps = [int(r["step"]) for r in rows if r.get("val/loss")]
    # Only scheduled passes before the stop (after steps 5, 10, ...: logged at step 4, 9, ...). A pass after the
    # save at the stop step is logged at stop - 1: none may be there, even when the schedule would run one.
    assert val_steps and all((s + 1) % 5 == 0 and s + 1 < stop for s in val_steps), (val_steps, stop)
    print(f"SIGTERM -> checkpoint of step {stop} -> exit 124: {exit_s:.1f} s")
    assert exit_s < EXIT_BOUND_S, f"exit {exit_s:.1f} s after SIGTERM (bound {EXIT_BOUND_S} s)"
