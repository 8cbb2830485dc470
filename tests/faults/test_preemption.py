"""Preemption (issue 4, fault 2): SIGUSR1 / SIGTERM set a flag; at the next step boundary all ranks
agree, save, and exit with the requeue code; the requeued job continues the same run dir and the
same W&B run on a continuous step axis.

Two ranks on gloo, started the way a user starts them (`python -m trainer.train trainer.devices=2`).
Session 1 is preempted by SIGUSR1 sent to rank 1 only (rank 0 must still agree and save with it);
session 2 by SIGTERM to the launcher (as Kubernetes or torchrun's own shutdown does) and session 3
by SIGUSR1 to the launcher, which pass them on to the ranks; session 4 runs to the end.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.faults import procs
from tests.faults.wandb_file import history, run_id

pytestmark = pytest.mark.slow
REQUEUE_EXIT = 124
MAX_STEPS = 32  # leaves >= 1 s of steps after each signal, even for the third session


# extended: one preemption with the same run dir and W&B run afterwards is in the default suite
# (tests/launch/test_container_image.py SIGTERM test, test_preemption_exit.py, test_async_checkpoint.py).
@pytest.mark.extended
def test_preempted_three_times_then_finishes_in_the_same_run_and_wandb_run(tmp_path, shared_cache):
    run = tmp_path / "run"
    argv = procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                          "trainer.devices=2", "strategy=ddp", f"trainer.max_steps={MAX_STEPS}",
                          "checkpoint.every_n_steps=4", "trainer.val_every_steps=100", "+data.batch_delay_s=0.1",
                          "logger.wandb=true")
    summaries, times, saved = [], [], 0
    with procs.jobs() as started:
        for session, (target, sig) in enumerate([("rank1", signal.SIGUSR1), ("launcher", signal.SIGTERM),
                                                  ("launcher", signal.SIGUSR1)]):
            job = procs.Job(argv, tmp_path / f"session{session}.log", timeout_s=240)
            started.append(job)
            # wait until this session has trained past its first new checkpoint, then signal mid-run
            first_new = (saved // 4 + 1) * 4
            procs.wait_for(f"checkpoint step {first_new}", lambda: first_new in procs.checkpoint_steps(run), 180, job=job)
            pid = job.pid if target == "launcher" else procs.wait_for("rank 1", lambda: procs.rank_pids(job).get(1), 30)
            os.kill(pid, sig)
            code = job.wait()
            assert code == REQUEUE_EXIT, job.tail()
            out = job.output()
            assert "preemption requested" in out
            summary = json.loads((run / "manifest.json").read_text())["summary"]
            assert summary["stopped"] == "preempted", summary
            saved = summary["last_checkpoint"]
            assert first_new <= saved < MAX_STEPS and saved in procs.checkpoint_steps(run), (saved, summary)
            summaries.append(summary)
            times.append(summary["preempted_signal_to_saved_s"])
            # every rank saved: a DDP checkpoint is one file written by rank 0 after a barrier both ranks passed
            assert (run / "checkpoints" / f"step-{saved:08d}" / "manifest.json").is_file()

        final = procs.Job(argv, tmp_path / "final.log", timeout_s=240)
        started.append(final)
        assert final.wait() == 0, final.tail()
    out = final.output()
    assert f"resuming from step {summaries[-1]['last_checkpoint']}" in out
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == MAX_STEPS
    print(f"signal -> saved checkpoint (s): {times}")
    assert all(0 < t < 30 for t in times), times

    # The same W&B run (one id for the run dir), one offline run file per session, and a step axis that
    # continues where each session stopped: every optimizer step logged exactly once across the sessions.
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 4 and all(run_id(f) == wandb_id for f in files), files
    steps = [row["_step"] for f in files for row in history(f) if "train/loss" in row]
    assert steps == list(range(MAX_STEPS)), steps
    # The CSV log (same steps) agrees.
    assert procs.logged_steps(run) == list(range(MAX_STEPS))
