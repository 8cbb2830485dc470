"""A rank SIGKILLed mid-run under torchrun --max-restarts (issue 4, fault 1): torchrun restarts the
workers, they resume from the newest valid checkpoint, and the final weights are bitwise identical
to an uninterrupted run (CPU, 2 ranks, DDP over gloo). Started as a user does: python -m launch.torchrun
(which sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, see launch/torchrun.py)."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.faults import procs

pytestmark = pytest.mark.slow
MAX_STEPS = 16


def launch_argv(run, cache, max_restarts: int, *extra: str):
    return procs.python_m("launch.torchrun", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}",
                          "trainer.devices=2", "strategy=ddp", f"trainer.max_steps={MAX_STEPS}",
                          "checkpoint.every_n_steps=4", "trainer.val_every_steps=100", "logger.wandb=false",
                          "+data.batch_delay_s=0.1", f"launcher.max_restarts={max_restarts}", *extra)


@pytest.mark.parametrize("mode", ["sync", pytest.param("async", marks=pytest.mark.extended)])  # async: also crash_in_save
def test_killed_rank_restarts_and_ends_bitwise_identical(mode, tmp_path, shared_cache):
    """With checkpoint.async=true the saves' writing runs in the background (the kill may land in one)."""
    saving = ["checkpoint.async=true"] if mode == "async" else []
    run, straight = tmp_path / "run", tmp_path / "straight"
    with procs.jobs() as started:
        reference = procs.Job(launch_argv(straight, shared_cache, 0), tmp_path / "straight.log", timeout_s=240)
        started.append(reference)
        job = procs.Job(launch_argv(run, shared_cache, 1, *saving), tmp_path / "killed.log", timeout_s=300)
        started.append(job)
        procs.wait_for("checkpoint step 4", lambda: 4 in procs.checkpoint_steps(run), 200, job=job)
        victim = procs.wait_for("rank 1", lambda: procs.rank_pids(job).get(1), 30)
        newest_at_kill = max(procs.checkpoint_steps(run))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # the restarted workers announce where they resume from (rank 0's console)
        resumed = procs.wait_for("the restarted workers resuming",
                                 lambda: re.search(r"resuming from step (\d+)", job.output()), 120, job=job)
        restart_s = time.monotonic() - killed_at
        assert job.wait() == 0, job.tail()
        assert reference.wait() == 0, reference.tail()
    out = job.output()
    assert victim not in procs.rank_pids(job).values()
    step = int(resumed.group(1))
    assert step % 4 == 0 and newest_at_kill <= step < MAX_STEPS, (step, newest_at_kill)  # the newest valid one
    print(f"SIGKILL of rank 1 -> restarted workers resuming from step {step}: {restart_s:.1f} s")
    assert out.count("starting from scratch") == 1 and out.count("resuming from step") == 1, out[-4000:]
    final = f"step-{MAX_STEPS:08d}"
    procs.assert_same_weights(procs.model_state(run / "checkpoints" / final),
                              procs.model_state(straight / "checkpoints" / final))
