"""The retrain pipeline end to end (real processes): killed after training, it continues without redoing the
finished steps; run again, it does nothing; a drift trigger with no drift does nothing at all."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli
from tests.lifecycle.runs import TINY, ok


def pipeline_args(runs_dir, cache):
    return [*TINY, "trainer.max_steps=6", f"paths.runs_dir={runs_dir}", f"paths.cache_dir={cache}",
            "promote.max_loss=10", "promote.eval_max_tokens=2048", "pipeline.model_name=tiny"]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_killed_after_training_it_resumes_without_redoing_steps(tmp_path, shared_cache):
    runs_dir = tmp_path / "runs"
    args = pipeline_args(runs_dir, shared_cache)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.pipeline", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = None
    deadline = time.time() + 1500
    while time.time() < deadline and proc.poll() is None:
        states = list(runs_dir.glob("*/*/pipeline.json"))
        if states:
            state = states[0]
            if "train" in json.loads(state.read_text())["steps"]:
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and the step it had started
    proc.wait()
    run_dir = state.parent
    done = json.loads(state.read_text())["steps"]
    assert set(done) == {"data_check", "train"}, done
    final = run_dir / "checkpoints" / "step-00000006" / "manifest.json"
    stamp = final.stat().st_mtime_ns

    again = ok(cli("trainer.pipeline", *args, timeout=1500))
    out = again.stdout
    assert "[1/5] data_check: up to date" in out and "[2/5] train: up to date" in out, out
    assert "python -m trainer.evaluate" in out and "python -m trainer.promote" in out
    assert final.stat().st_mtime_ns == stamp and "resuming from" not in out + again.stderr  # not trained again
    assert "pipeline: promoted version 1 of tiny" in out
    decision = json.loads((run_dir / "promotion.json").read_text())
    assert decision["decision"] == "promoted" and decision["candidate"]["step"] == 6

    third = ok(cli("trainer.pipeline", *args, timeout=600))
    assert third.stdout.count("up to date") == 5, third.stdout
    from trainer.lifecycle.registry import DecisionLog

    assert len(DecisionLog(runs_dir / "registry" / "decisions.jsonl").records()) == 1  # promoted once


@pytest.mark.slow
def test_drift_trigger_without_drift_does_nothing(tmp_path, shared_cache):
    from tests.lifecycle.corpora import stdlib_paragraphs, write_jsonl

    corpus = write_jsonl(tmp_path / "data" / "code.jsonl", stdlib_paragraphs()[:1200])
    runs_dir = tmp_path / "runs"
    proc = ok(cli("trainer.pipeline", "pipeline=retrain_on_drift", f"pipeline.drift_reference={corpus}", "data=text",
                  f"data.path={corpus}", "data.tokenizer=byte", *pipeline_args(runs_dir, shared_cache), timeout=600))
    assert "no drift" in proc.stdout and "nothing to do" in proc.stdout
    assert not list(runs_dir.glob("*/*/pipeline.json"))  # nothing trained
    proc = ok(cli("trainer.pipeline", "pipeline.trigger=drift", *pipeline_args(runs_dir, shared_cache), timeout=120), 2)
    assert "pipeline.drift_reference" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigterm_to_the_pipeline_preempts_training_with_124_and_a_rerun_resumes(tmp_path, shared_cache):
    """As SLURM, Kubernetes or `kill` do: the signal reaches the pipeline's own process, not the training step."""
    runs_dir = tmp_path / "runs"
    # 40 steps, the loader sleeping 0.1 s per batch: training lasts seconds, long enough to signal it mid-run.
    args = [a for a in pipeline_args(runs_dir, shared_cache) if not a.startswith("trainer.max_steps=")]
    args += ["trainer.max_steps=40", "+data.batch_delay_s=0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.pipeline", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not list(runs_dir.glob("*/*/checkpoints/step-*/manifest.json")):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.kill(proc.pid, signal.SIGTERM)  # the pipeline process only
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 124, out[-3000:]
    assert "preemption requested (SIGTERM)" in out and "train: PREEMPTED with exit code 124" in out, out[-3000:]
    run_dir = next(runs_dir.glob("*/*/pipeline.json")).parent
    assert set(json.loads((run_dir / "pipeline.json").read_text())["steps"]) == {"data_check"}
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "preempted" and 10 <= summary["last_checkpoint"] < 40, summary

    again = ok(cli("trainer.pipeline", *args, timeout=1200))
    out = again.stdout + again.stderr
    assert "[1/5] data_check: up to date" in out and "resuming from" in out, out[-3000:]
    assert "pipeline: promoted version 1 of tiny" in out
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == 40
