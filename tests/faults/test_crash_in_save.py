"""A crash during checkpoint writing (issue 4, fault 3): the process is SIGKILLed while a save is
unfinished (its state written under .tmp-step-N, no manifest, not renamed). The previous checkpoint
stays intact and is the one resumed from; the partial one is skipped and named; the run finishes
with weights bitwise identical to a run that was never interrupted. The same with checkpoint.async=true,
where the kill lands while the background thread is writing (the loop has moved on)."""
from __future__ import annotations

import json
import os
import signal

import pytest

from trainer.checkpoint import store
from tests.faults import procs

pytestmark = pytest.mark.slow
MAX_STEPS = 12


def train_argv(run, cache, *extra):
    return procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}",
                          f"trainer.max_steps={MAX_STEPS}", "checkpoint.every_n_steps=4", "trainer.val_every_steps=100",
                          "logger.wandb=false", *extra)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_during_save_keeps_the_previous_checkpoint_and_resumes_from_it(mode, tmp_path, shared_cache):
    saving = ["checkpoint.async=true"] if mode == "async" else []
    run, straight = tmp_path / "run", tmp_path / "straight"
    ckpts = run / "checkpoints"
    with procs.jobs() as started:
        reference = procs.Job(train_argv(straight, shared_cache), tmp_path / "straight.log", timeout_s=240)
        started.append(reference)  # runs alongside; compared at the end

        # Every save pauses 3 s after writing its state and before its manifest and rename.
        job = procs.Job(train_argv(run, shared_cache, "checkpoint.debug_pause_in_save_s=3", *saving),
                        tmp_path / "crash.log", timeout_s=240)
        started.append(job)
        procs.wait_for("step 4 published", lambda: 4 in procs.checkpoint_steps(run), 180, job=job)
        before = store.verify(ckpts / "step-00000004")
        partial = ckpts / ".tmp-step-00000008"
        procs.wait_for("the save of step 8 under way", lambda: (partial / "state.ckpt").is_file(), 60, job=job, poll_s=0.02)
        os.kill(job.pid, signal.SIGKILL)
        assert job.wait() == -signal.SIGKILL
        assert partial.is_dir() and not (partial / "manifest.json").exists()
        assert procs.checkpoint_steps(run) == [4]
        assert store.verify(ckpts / "step-00000004") == before  # untouched by the crash

        resumed = procs.Job(train_argv(run, shared_cache, *saving), tmp_path / "resume.log", timeout_s=240)
        started.append(resumed)
        assert resumed.wait() == 0, resumed.tail()
        assert reference.wait() == 0, reference.tail()
    out = resumed.output()
    assert f"ignoring partial checkpoint {partial}" in out  # skipped, and named
    assert "resuming from step 4" in out
    assert not partial.exists()  # the re-run of step 8 replaced the partial with a published checkpoint
    assert procs.checkpoint_steps(run) == [4, 8, 12]
    assert json.loads((run / "manifest.json").read_text())["summary"]["steps"] == MAX_STEPS
    procs.assert_same_weights(procs.model_state(ckpts / "step-00000012"),
                              procs.model_state(straight / "checkpoints" / "step-00000012"))
