"""configs/hydra/launcher/slurm.yaml: Hydra sweeps through hydra-submitit-launcher, one job per point."""
from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from trainer.config import CONFIG_DIR


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def launcher_params(cfg) -> dict:
    """hydra.launcher resolved against the run config, as Hydra does at sweep time (minus runtime-only keys)."""
    node = cfg.hydra.launcher
    return {k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
            for k in node if k not in ("name", "submitit_folder")}


def test_slurm_sweep_launcher_composes_from_the_experiment():
    cfg = compose_with_hydra(["hydra/launcher=slurm", "experiment=gpt_1b", "+launcher=slurm",
                              "launcher.partition=gpu", "launcher.account=proj7"])
    p = launcher_params(cfg)
    assert p["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"]) == (2, 8, 8)
    assert (p["partition"], p["account"]) == ("gpu", "proj7")
    assert p["signal_delay_s"] == 120 and p["max_num_timeout"] >= 1
    assert p["additional_parameters"]["requeue"] is True


@pytest.mark.parametrize("overrides, cpus", [([], 1), (["experiment=gpt2_124m"], 5), (["++data.num_workers=7"], 8),
                                             (["experiment=gpt2_124m", "launcher.cpus_per_task=12"], 12)])
def test_sweep_jobs_ask_for_the_cpus_launch_slurm_asks_for(overrides, cpus):
    """cpus_per_task per rank: launcher.cpus_per_task, else data.num_workers + 1, the same on both SLURM paths."""
    from launch.slurm import render_sbatch
    from tests.launch.conftest import spec_for
    from tests.launch.test_slurm_render import sbatch_options

    assert launcher_params(compose_with_hydra(["hydra/launcher=slurm", "+launcher=slurm", *overrides]))["cpus_per_task"] == cpus
    assert sbatch_options(render_sbatch(spec_for("slurm", *overrides)))["cpus-per-task"] == str(cpus)


def test_without_a_launcher_section_partition_is_unset():
    p = launcher_params(compose_with_hydra(["hydra/launcher=slurm"]))
    assert p["partition"] is None and p["tasks_per_node"] == 1


def test_submitit_accepts_the_parameters_and_writes_the_batch_script(tmp_path):
    """Feed the parameters to submitit exactly as the Hydra plugin does, and read the sbatch it would submit."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = launcher_params(compose_with_hydra(["hydra/launcher=slurm", "experiment=gpt_1b", "+launcher=slurm",
                                                 "launcher.partition=gpu"]))
    params.pop("_target_")
    executor = submitit.AutoExecutor(folder=str(tmp_path), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})  # raises on unknown
    text = executor._executor._make_submission_file_text("python -m trainer.train", "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --requeue", "#SBATCH --time=240",
                 "#SBATCH --cpus-per-task=5"):  # gpt_1b: 4 loader workers per rank, plus the rank
        assert line in text, line
    assert re.search(r"#SBATCH --signal=USR\d@120", text)
    assert text.index('export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"') < text.index("\nsrun ")  # srun gets them too
