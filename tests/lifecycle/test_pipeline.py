"""The retrain pipeline end to end (real processes): preempted, killed and rerun, it finishes training once
and promotes once; a drift trigger with no drift does nothing at all."""
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
@pytest.mark.timeout(2400)
def test_preempted_killed_and_rerun_the_pipeline_finishes_training_once_and_promotes_once(tmp_path, shared_cache):
    """One pipeline's life, four processes (one end-to-end test: each pipeline run costs a minute here):
    1. SIGTERM mid-training, as SLURM, Kubernetes or `kill` send it to the pipeline's own process (not the
       training step): training checkpoints, the pipeline exits 124;
    2. rerun: training resumes and finishes; the pipeline is killed -9 (with its step) just after training;
    3. rerun: nothing is trained again; evaluate, export and promote run; version 1 is promoted;
    4. rerun: every step is up to date, nothing is promoted twice."""
    runs_dir = tmp_path / "runs"
    # 40 steps, the loader sleeping 0.1 s per batch: training lasts seconds, long enough to signal it mid-run.
    args = [a for a in pipeline_args(runs_dir, shared_cache) if not a.startswith("trainer.max_steps=")]
    args += ["trainer.max_steps=40", "+data.batch_delay_s=0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "trainer.pipeline", *args], cwd=ROOT, env=env,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_until(proc: subprocess.Popen, condition, what: str) -> None:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not condition():
            time.sleep(0.05)
        assert proc.poll() is None, f"the pipeline ended before {what}:\n" + proc.communicate()[0][-3000:]

    # 1. SIGTERM once training has written a checkpoint
    proc = start()
    try:
        wait_until(proc, lambda: list(runs_dir.glob("*/*/checkpoints/step-*/manifest.json")), "a checkpoint")
        os.kill(proc.pid, signal.SIGTERM)  # the pipeline process only
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 124, out[-3000:]
    assert "preemption requested (SIGTERM)" in out and "train: PREEMPTED with exit code 124" in out, out[-3000:]
    state = next(runs_dir.glob("*/*/pipeline.json"))
    run_dir = state.parent
    assert set(json.loads(state.read_text())["steps"]) == {"data_check"}
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "preempted" and 10 <= summary["last_checkpoint"] < 40, summary

    # 2. the rerun resumes training; killed -9 (the pipeline and the step it started) once training is done
    proc = start()
    try:
        wait_until(proc, lambda: "train" in json.loads(state.read_text())["steps"], "training finished")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    assert "[1/5] data_check: up to date" in out and "resuming from" in out, out[-3000:]
    assert set(json.loads(state.read_text())["steps"]) == {"data_check", "train"}
    summary = json.loads((run_dir / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == 40
    final = run_dir / "checkpoints" / "step-00000040" / "manifest.json"
    stamp = final.stat().st_mtime_ns

    # 3. the next rerun does not train again, and promotes
    again = ok(cli("trainer.pipeline", *args, timeout=1500))
    out = again.stdout
    assert "[1/5] data_check: up to date" in out and "[2/5] train: up to date" in out, out
    assert "python -m trainer.evaluate" in out and "python -m trainer.promote" in out
    assert final.stat().st_mtime_ns == stamp and "resuming from" not in out + again.stderr  # not trained again
    assert "pipeline: promoted version 1 of tiny" in out
    decision = json.loads((run_dir / "promotion.json").read_text())
    assert decision["decision"] == "promoted" and decision["candidate"]["step"] == 40

    # 4. and the one after that finds everything done
    third = ok(cli("trainer.pipeline", *args, timeout=600))
    assert third.stdout.count("up to date") == 5, third.stdout
    from trainer.lifecycle.registry import DecisionLog

    assert len(DecisionLog(runs_dir / "registry" / "decisions.jsonl").records()) == 1  # promoted once
