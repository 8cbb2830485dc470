"""The rendered sbatch script: resources, srun, signal + requeue, the job-keyed run id, containers."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from launch.slurm import render_sbatch
from tests.conftest import cli
from tests.launch.conftest import spec_for
from trainer.errors import UserError
from trainer.tracking.run_dir import launcher_run_id


def sbatch_options(script: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else ""
    return out


@pytest.fixture(scope="module")
def gpt_1b_script() -> str:
    spec = spec_for("slurm", "experiment=gpt_1b", "launcher.partition=gpu", "launcher.account=proj7",
                    "launcher.time=1-00:00:00", "optim.lr=3e-4", "run.name=big run")
    return render_sbatch(spec)


def test_resources_follow_the_experiment(gpt_1b_script):
    o = sbatch_options(gpt_1b_script)
    assert o["nodes"] == "2" and o["ntasks-per-node"] == "8" and o["gpus-per-node"] == "8"
    assert o["partition"] == "gpu" and o["account"] == "proj7" and o["time"] == "1-00:00:00"


def test_each_rank_gets_cpus_for_its_loader_workers(gpt_1b_script):
    assert sbatch_options(gpt_1b_script)["cpus-per-task"] == "5"  # data.num_workers=4, plus the rank itself
    # srun (SLURM >= 22.05) does not inherit --cpus-per-task from sbatch: the script passes it on
    assert 'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-5}"' in gpt_1b_script
    assert sbatch_options(render_sbatch(spec_for("slurm", "launcher.cpus_per_task=12")))["cpus-per-task"] == "12"
    assert sbatch_options(render_sbatch(spec_for("slurm")))["cpus-per-task"] == "1"  # no loader workers


def test_signal_reaches_the_ranks_and_the_job_requeues(gpt_1b_script):
    o = sbatch_options(gpt_1b_script)
    assert o["signal"] == "USR1@120"  # no "B:": every task of the step gets it, not only the batch shell
    assert "requeue" in o and o["open-mode"] == "append"
    # srun exits with the trainer's requeue code after a preemption checkpoint -> the script requeues
    assert re.search(r'if \[ "\$status" -eq 124 \] \|\| \[ -e "\$TRAINER_REQUEUE_MARKER" \]; then\n(.*\n){2}\s+scontrol requeue "\$SLURM_JOB_ID"', gpt_1b_script)


def test_ranks_start_with_srun_and_get_the_overrides(gpt_1b_script):
    srun = gpt_1b_script[gpt_1b_script.index("\nsrun "):].split("\nstatus=")[0].replace("\\\n", " ")
    words = shlex.split(srun.replace('"run.id=${RUN_ID}"', "run.id=RUNID"))
    assert words[0] == "srun" and "--kill-on-bad-exit=1" in words
    i = words.index(sys.executable)
    assert words[i:] == [sys.executable, "-m", "trainer.train", "+launcher=slurm", "experiment=gpt_1b",
                         "launcher.partition=gpu", "launcher.account=proj7", "launcher.time=1-00:00:00",
                         "optim.lr=3e-4", "run.name=big run", "run.id=RUNID"]
    assert "export TRAINER_REQUEUE_BY=batch" in gpt_1b_script
    subprocess.run(["bash", "-n"], input=gpt_1b_script, text=True, check=True)


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "4242"},
    {"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"},
])
def test_run_id_is_the_one_the_trainer_derives(gpt_1b_script, env):
    """The script's RUN_ID must be the trainer's own job-derived id: same run dir either way."""
    line = next(ln for ln in gpt_1b_script.splitlines() if ln.startswith("RUN_ID="))
    out = subprocess.run(["bash", "-c", f'{line}\necho "$RUN_ID"'], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == launcher_run_id(env)


def test_explicit_run_id_is_kept():
    script = render_sbatch(spec_for("slurm", "run.id=mine"))
    assert "run.id=mine" in script and "run.id=${RUN_ID}" not in script


def test_container_through_pyxis():
    spec = spec_for("slurm", "experiment=gpt2_124m", "launcher.image='nvcr.io#acme/trainer:1.0'",
                    "launcher.container_mounts=[/lustre/runs:/workspace/runs]", "+launcher.env.NCCL_SOCKET_IFNAME=ib0")
    script = render_sbatch(spec)
    srun = script[script.index("\nsrun "):].split("\nstatus=")[0]
    assert "'--container-image=nvcr.io#acme/trainer:1.0'" in srun
    assert "--container-mounts=/lustre/runs:/workspace/runs" in srun and "--container-workdir=/workspace" in srun
    assert " python -m trainer.train " in srun  # the image's python, not this machine's
    assert "export NCCL_SOCKET_IFNAME=ib0" in script


def test_mounts_need_an_image():
    with pytest.raises(UserError, match="launcher.image"):
        render_sbatch(spec_for("slurm", "launcher.container_mounts=[/a:/b]"))


def test_cli_dry_run_and_out(tmp_path):
    out = tmp_path / "job.sbatch"
    mine = tmp_path / "my-configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text("# @package _global_\nrun:\n  name: mine\ntrainer:\n  devices: 2\n  accelerator: cpu\n")
    r = cli("launch.slurm", "--config-dir", str(mine), "experiment=mine", "strategy=ddp", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    script = out.read_text()
    assert sbatch_options(script)["ntasks-per-node"] == "2" and sbatch_options(script)["job-name"] == "mine"
    assert "gpus-per-node" not in sbatch_options(script)  # a CPU experiment asks for no GPU
    assert f"-m trainer.train --config-dir {mine} +launcher=slurm experiment=mine" in script  # the job composes alike
