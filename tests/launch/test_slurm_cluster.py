"""A real one-machine SLURM cluster runs a rendered sbatch script: srun ranks, gloo all_reduce, requeue.

The job's first run exits with the trainer's requeue code (as a preempted trainer does after its
checkpoint); the rendered script must requeue it with scontrol, and the second run must find the
same run id and master port and all_reduce again.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from launch.slurm import render_sbatch
from tests.conftest import cli
from tests.launch.conftest import ALLREDUCE_JOB, ROOT, needs_root, spec_for

pytestmark = [pytest.mark.slow, needs_root("slurmctld", "slurmd", "munged", "sbatch")]


@pytest.fixture
def slurm(slurm_cluster):
    return {**os.environ, **slurm_cluster}


def test_rendered_batch_script_runs_ranks_and_requeues(slurm, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    spec = spec_for("slurm", "trainer.devices=2", "strategy=ddp", "launcher.time=00:05:00", f"launcher.log_dir={logs}")
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(spec, command=[sys.executable, str(ALLREDUCE_JOB), str(out), "--requeue-once"]))

    r = subprocess.run(["sbatch", "--wait", "--parsable", str(script)], env=slurm, capture_output=True, text=True,
                       timeout=150)
    log = "\n".join(p.read_text() for p in logs.glob("*.out"))
    assert r.returncode == 0, f"{r.stderr}\n{log}"
    job_id = r.stdout.strip().split(";")[0]

    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["sum"] for x in ranks] == [3.0, 3.0]  # 1 + 2 over gloo across the two srun tasks
    assert [x["world"] for x in ranks] == [2, 2]
    assert [x["restarts"] for x in ranks] == [1, 1]  # this is the requeued run
    assert f"job {job_id} (restart 0)" in log and f"job {job_id} (restart 1)" in log
    assert log.count(f"run id slurm-{job_id}") == 2  # the same run dir key before and after the requeue
    assert "requeueing job" in log

    show = subprocess.run(["scontrol", "show", "job", job_id], env=slurm, capture_output=True, text=True, timeout=30)
    assert "Restarts=1" in show.stdout and "JobState=COMPLETED" in show.stdout


def wait_for_job(job_id: str, env: dict, timeout_s: float = 240) -> str:
    """Poll until the job ends; return its final state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30)
        state = re.search(r"JobState=(\w+)", show.stdout)
        if state and state.group(1) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state.group(1)
        time.sleep(2)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"job {job_id} did not finish in {timeout_s} s")


def test_the_cli_submits_a_training_run(slurm, tmp_path, shared_cache):
    """python -m launch.slurm --submit: the trainer runs in place under srun, in the job-keyed run dir."""
    runs = tmp_path / "runs"
    env = {**slurm, "TRAINER_RUNS_DIR": str(runs), "TRAINER_CACHE": str(shared_cache)}
    r = cli("launch.slurm", "--submit", "trainer.devices=2", "strategy=ddp", "trainer.max_steps=3",
            "trainer.val_every_steps=3", "checkpoint.every_n_steps=3", "trainer.progress_bar=false",
            "logger.wandb=false", "launcher.time=00:10:00", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    job_id = re.search(r"submitted job (\d+)", r.stdout).group(1)
    state = wait_for_job(job_id, env)
    log = (runs / "gpt_tiny_cpu" / "slurm" / f"gpt_tiny_cpu-{job_id}.out").read_text()
    assert state == "COMPLETED", log
    frozen = OmegaConf.load(runs / "gpt_tiny_cpu" / f"slurm-{job_id}" / "config.yaml")
    assert frozen.run.id == f"slurm-{job_id}" and frozen.trainer.devices == 2
    assert "world 2" in log


def test_a_hydra_sweep_on_slurm_is_preempted_through_the_trainers_flag_and_requeued(slurm, tmp_path, shared_cache):
    """`-m hydra/launcher=slurm`: submitit's warning signal (USR2) reaches the trainer's preemption flag, which
    saves at the next step boundary and requeues the job; the requeued job resumes and the sweep ends well."""
    runs = tmp_path / "runs"
    env = {**os.environ, **slurm, "TRAINER_RUNS_DIR": str(runs), "TRAINER_CACHE": str(shared_cache),
           "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", "-m", "hydra/launcher=slurm", "optim.lr=1e-3,2e-3", "model.d_model=32",
         "model.n_layers=1", "model.n_heads=2", "model.seq_len=16", "data.batch_size=4", "trainer.progress_bar=false",
         "trainer.max_steps=24", "checkpoint.every_n_steps=4", "trainer.val_every_steps=100", "+data.batch_delay_s=0.3",
         "logger.wandb=false", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=20"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(runs.glob("gpt_tiny_cpu/slurm-*_0-0/checkpoints/step-00000004")):
            assert sweep.poll() is None, sweep.stdout.read()[-4000:]
            time.sleep(2)
        (point,) = runs.glob("gpt_tiny_cpu/slurm-*_0-0")
        array_job = re.match(r"slurm-(\d+)_0-0", point.name).group(1)
        # what SLURM sends submitit's jobs before the time limit (--signal=USR2@...): to every task of the step
        subprocess.run(["scancel", "--signal=USR2", f"{array_job}_0"], env=env, check=True, timeout=30)
        out, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-4000:]
    log = (point / "logs" / "rank0.log").read_text()
    stop = re.search(r"preemption requested \(SIGUSR2\): saving a checkpoint at step (\d+)", log)
    assert stop and "requeued SLURM job" in log, log[-3000:]
    assert f"resuming from {point / 'checkpoints' / f'step-{int(stop.group(1)):08d}'}" in log  # the requeued run
    show = subprocess.run(["scontrol", "show", "job", f"{array_job}_0"], env=env, capture_output=True, text=True, timeout=30)
    assert "Restarts=1" in show.stdout, show.stdout
    for p in runs.glob("gpt_tiny_cpu/slurm-*"):
        assert json.loads((p / "manifest.json").read_text())["summary"]["steps"] == 24, p
