"""SLURM for real (issue 4, fault 5): a one-machine cluster (scripts/slurm_cluster.sh) runs the batch
script launch.slurm renders, with a 2-task DDP training job. It is requeued twice mid-run: first by the
warning signal (USR1 to every task, as `--signal=USR1@T` sends it: the ranks save, exit 124 and the
script requeues), then by `scontrol requeue` from outside (SLURM sends SIGTERM: the ranks save within
KillWait and the requeued job resumes). `sbatch --wait` returns the final code, 0.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from launch.slurm import render_sbatch
from tests.faults import procs
from tests.launch.conftest import ROOT, needs_root, spec_for

pytestmark = [pytest.mark.slow, needs_root("slurmctld", "slurmd", "munged", "sbatch")]
MAX_STEPS = 60


@pytest.fixture
def slurm(slurm_cluster):
    return {**procs.env(), **slurm_cluster}


def scontrol(env, *args: str) -> str:
    return subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, timeout=30).stdout


def test_two_task_training_job_survives_usr1_and_scontrol_requeue(slurm, tmp_path, shared_cache):
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    logs.mkdir()
    spec = spec_for("slurm", *procs.TINY, "trainer.devices=2", "strategy=ddp", f"trainer.max_steps={MAX_STEPS}",
                    "checkpoint.every_n_steps=4", "trainer.val_every_steps=100", "logger.wandb=false",
                    "+data.batch_delay_s=0.1", f"paths.runs_dir={runs}", f"paths.cache_dir={shared_cache}",
                    "launcher.time=00:10:00", f"launcher.log_dir={logs}")
    script = tmp_path / "train.sbatch"
    script.write_text(render_sbatch(spec, chdir=str(ROOT)))
    with procs.jobs() as started:
        submit = procs.Job(["sbatch", "--wait", "--parsable", str(script)], tmp_path / "sbatch.log",
                           env_vars=slurm, timeout_s=420)
        started.append(submit)
        job_id = procs.wait_for("the job id", lambda: re.match(r"(\d+)", submit.output()), 30, job=submit).group(1)
        run = runs / "gpt_tiny_cpu" / f"slurm-{job_id}"
        job_log = logs / f"gpt_tiny_cpu-{job_id}.out"

        def read_log() -> str:
            return job_log.read_text(errors="replace") if job_log.exists() else ""

        # 1. the warning signal, to every task of the job step (not the batch shell)
        procs.wait_for("checkpoint step 4", lambda: 4 in procs.checkpoint_steps(run), 180, job=submit)
        subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm, check=True, timeout=30)
        t_usr1 = time.monotonic()
        procs.wait_for("the script's requeue", lambda: "requeueing job" in read_log(), 120, job=submit)
        first = json.loads((run / "manifest.json").read_text())["summary"]
        assert first["stopped"] == "preempted" and first["last_checkpoint"] >= 4, first
        print(f"USR1 -> checkpoint saved: {first['preempted_signal_to_saved_s']} s (step {first['last_checkpoint']})")

        # 2. the requeued job resumes; once it has saved a newer checkpoint, requeue it from outside
        nxt = (first["last_checkpoint"] // 4 + 1) * 4
        procs.wait_for("restart 1", lambda: "(restart 1)" in read_log(), 180, job=submit)
        t_restart1 = time.monotonic()
        procs.wait_for(f"restart 1 reaching step {nxt}", lambda: nxt in procs.checkpoint_steps(run), 180, job=submit)
        scontrol(slurm, "requeue", job_id)
        t_requeue = time.monotonic()
        procs.wait_for("restart 2", lambda: "(restart 2)" in read_log(), 180, job=submit)
        t_restart2 = time.monotonic()
        assert submit.wait() == 0, f"{submit.tail()}\n{read_log()[-6000:]}"
        print(f"USR1 -> requeued job running again: {t_restart1 - t_usr1:.1f} s; "
              f"scontrol requeue -> running again: {t_restart2 - t_requeue:.1f} s; "
              f"restart 2 -> completed: {time.monotonic() - t_restart2:.1f} s")
    log = read_log()
    assert "(restart 2)" in log, log[-4000:]
    assert "preemption requested (SIGUSR1)" in log and "preemption requested (SIGTERM)" in log, log[-4000:]
    assert log.count("resuming from step") >= 2
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == MAX_STEPS, summary
    assert set(procs.logged_steps(run)) == set(range(MAX_STEPS))
    show = scontrol(slurm, "show", "job", job_id)
    assert "Restarts=2" in show and "JobState=COMPLETED" in show, show
