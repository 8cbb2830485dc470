"""The README's nightly retrain job on a real one-machine SLURM cluster (scripts/slurm_cluster.sh): the
pipeline started with `srun` in a one-task job trains 2 DDP ranks of its own; the warning signal
(USR1 to the job step, as `--signal=USR1@T` sends it) reaches the training step through the pipeline,
which exits 124; the script requeues, and the requeued job resumes the same run and promotes."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.faults import procs
from tests.launch.conftest import ROOT, needs_root
from tests.lifecycle.runs import TINY

pytestmark = [pytest.mark.slow, needs_root("slurmctld", "slurmd", "munged", "sbatch", "srun")]
MAX_STEPS = 40


@pytest.fixture
def slurm(slurm_cluster):
    return {**procs.env(), **slurm_cluster}


def test_srun_pipeline_is_preempted_by_usr1_requeued_and_resumes(slurm, tmp_path, shared_cache):
    runs, log = tmp_path / "runs", tmp_path / "retrain.out"
    args = [*TINY, "trainer.devices=2", "strategy=ddp", f"trainer.max_steps={MAX_STEPS}", "+data.batch_delay_s=0.2",
            f"paths.runs_dir={runs}", f"paths.cache_dir={shared_cache}", "logger.wandb=false", "promote.max_loss=10",
            "promote.eval_max_tokens=2048", "pipeline.model_name=tiny"]
    script = tmp_path / "retrain.sbatch"
    # The README's script, on this cluster's 2 CPUs.
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=retrain --nodes=1 --ntasks=1 --cpus-per-task=2 --time=00:20:00 --requeue
#SBATCH --output={log} --open-mode=append --chdir={ROOT}
export TRAINER_REQUEUE_BY=batch
srun python -m trainer.pipeline {' '.join(args)}
code=$?; echo "pipeline exit $code"; [ $code -eq 124 ] && scontrol requeue "$SLURM_JOB_ID"; exit $code
""")
    env = {**slurm, "PATH": f"{ROOT / '.venv' / 'bin'}:{slurm['PATH']}"}
    with procs.jobs() as started:
        submit = procs.Job(["sbatch", "--wait", "--parsable", str(script)], tmp_path / "sbatch.log", env_vars=env,
                           timeout_s=900)
        started.append(submit)
        job_id = procs.wait_for("the job id", lambda: re.match(r"(\d+)", submit.output()), 30, job=submit).group(1)
        read_log = lambda: log.read_text(errors="replace") if log.exists() else ""  # noqa: E731
        run = procs.wait_for("the run dir", lambda: next(runs.glob("*/*/checkpoints"), None), 300, job=submit).parent
        procs.wait_for("checkpoint step 10", lambda: 10 in procs.checkpoint_steps(run), 300, job=submit)
        subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm, check=True, timeout=30)
        procs.wait_for("the requeue", lambda: "pipeline exit 124" in read_log(), 180, job=submit)
        first = json.loads((run / "manifest.json").read_text())["summary"]
        assert first["stopped"] == "preempted" and 10 <= first["last_checkpoint"] < MAX_STEPS, first
        assert submit.wait() == 0, f"{submit.tail()}\n{read_log()[-6000:]}"
    out = read_log()
    assert "preemption requested (SIGUSR1)" in out and "train: PREEMPTED with exit code 124" in out, out[-6000:]
    assert "resuming from step" in out and "pipeline: promoted version 1 of tiny" in out, out[-6000:]
    assert "SLURM started" not in out  # the one task's training step started its 2 ranks itself
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == MAX_STEPS, summary
    final = json.loads((run / "checkpoints" / f"step-{MAX_STEPS:08d}" / "manifest.json").read_text())
    assert final["world_size"] == 2, final
    show = subprocess.run(["scontrol", "show", "job", job_id], env=slurm, capture_output=True, text=True).stdout
    assert "Restarts=1" in show and "JobState=COMPLETED" in show, show
