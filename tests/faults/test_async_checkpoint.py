"""checkpoint.async=true: the training loop blocks only for the copy to host memory while a background
thread writes, and a preemption waits for the save in flight before exiting 124 (2 ranks, DDP, gloo).

Every save pauses 1 s in the background (checkpoint.debug_pause_in_save_s) after its state is written
and before its manifest and rename; the loop goes on meanwhile. SIGUSR1 lands while a save is in
flight: the ranks agree, save once more, wait for both writes, and exit for the requeue with every
checkpoint published."""
from __future__ import annotations

import json
import os
import signal

import pytest

from trainer.checkpoint import store
from tests.faults import procs

pytestmark = pytest.mark.slow
PAUSE_S = 1.0


def test_async_save_blocks_the_loop_only_for_the_copy_and_preemption_waits_for_it(tmp_path, shared_cache):
    run = tmp_path / "run"
    argv = procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                          "trainer.devices=2", "strategy=ddp", "trainer.max_steps=60", "checkpoint.every_n_steps=4",
                          "trainer.val_every_steps=100", "logger.wandb=false", "checkpoint.async=true",
                          f"checkpoint.debug_pause_in_save_s={PAUSE_S}", "+data.batch_delay_s=0.3")
    ckpts = run / "checkpoints"
    with procs.jobs() as started:
        job = procs.Job(argv, tmp_path / "train.log", timeout_s=300)
        started.append(job)
        procs.wait_for("step 4 published", lambda: 4 in procs.checkpoint_steps(run), 240, job=job)
        in_flight = ckpts / ".tmp-step-00000008"
        procs.wait_for("the save of step 8 in the background", lambda: (in_flight / "state.ckpt").is_file(), 60,
                       job=job, poll_s=0.01)
        assert not (in_flight / "manifest.json").exists()  # written, not yet published
        os.kill(job.pid, signal.SIGUSR1)
        assert job.wait() == 124, job.tail()
    out = job.output()
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    last = summary["last_checkpoint"]
    assert summary["stopped"] == "preempted" and last >= 8, summary
    # Exit came only after the preemption save was published (and the one before it).
    assert f"waiting for the checkpoint of step {last} to be written" in out, out[-3000:]
    assert {8, last} <= set(procs.checkpoint_steps(run))
    store.verify(ckpts / f"step-{last:08d}")
    assert not list(ckpts.glob(".tmp-*"))
    # The loop was blocked for the copy only: far less than the background's pause, for the saves that
    # did not have to wait for the previous one (4 steps of >= 0.3 s each separate two saves).
    blocked = summary["checkpoint_save_s"]
    assert blocked[0] < PAUSE_S / 2, blocked
