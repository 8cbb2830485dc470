"""configs/hydra/launcher/slurm.yaml: Hydra sweeps through hydra-submitit-launcher, one job per point."""
from __future__ import annotations

import re

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
                 "#SBATCH --partition=gpu", "#SBATCH --requeue", "#SBATCH --time=240"):
        assert line in text, line
    assert re.search(r"#SBATCH --signal=USR\d@120", text)
