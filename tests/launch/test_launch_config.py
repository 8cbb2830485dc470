"""The launcher config group composes with the real configs, and bad launcher input fails clearly."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from launch.config import LauncherConfig, parse_launcher, parse_size, with_launcher_selected
from tests.launch.conftest import spec_for
from trainer.errors import UserError


@pytest.mark.parametrize("kind", ["torchrun", "slurm", "k8s"])
def test_each_launcher_composes_with_the_experiment_layout(kind):
    spec = spec_for(kind, "experiment=gpt_1b")
    assert spec.launcher.kind == kind
    assert isinstance(spec.launcher, LauncherConfig)
    # the experiment, not the launcher file, decides the layout
    assert (spec.nodes, spec.procs_per_node, spec.num_workers) == (2, 8, 4)
    assert spec.job_name == "gpt_1b"
    assert spec.overrides == (f"+launcher={kind}", "experiment=gpt_1b")


def test_gpus_follow_the_accelerator():
    assert spec_for("slurm", "experiment=gpt_1b").gpus_per_node == 8
    cpu = spec_for("slurm", "trainer.devices=2", "strategy=ddp")  # gpt_tiny_cpu: accelerator=cpu
    assert (cpu.procs_per_node, cpu.gpus_per_node) == (2, 0)


def test_unknown_launcher_key_names_the_closest():
    with pytest.raises(UserError, match=r"launcher\.tme'.*'time'"):
        parse_launcher(OmegaConf.create({"tme": "01:00:00"}), "slurm")


def test_wrong_type_names_the_key():
    with pytest.raises(UserError, match=r"launcher\.max_restarts"):
        parse_launcher(OmegaConf.create({"max_restarts": "many"}), "torchrun")


def test_launcher_nodes_must_agree_with_the_trainer():
    with pytest.raises(UserError, match=r"set trainer\.num_nodes=4"):
        spec_for("slurm", "experiment=gpt_1b", "launcher.nodes=4")
    assert spec_for("slurm", "experiment=gpt_1b", "launcher.nodes=2").nodes == 2


def test_launcher_kind_must_match_the_cli():
    with pytest.raises(UserError, match=r"\+launcher=slurm"):
        parse_launcher(OmegaConf.create({"kind": "k8s"}), "slurm")


@pytest.mark.parametrize("key", ["WANDB_API_KEY", "HF_TOKEN", "MY_PASSWORD"])
def test_secrets_are_refused_in_launcher_env(key):
    with pytest.raises(UserError, match="secret"):
        parse_launcher(OmegaConf.create({"env": {key: "x"}}), "k8s")


@pytest.mark.parametrize("bad", ["4h", "99:99:99:99", ""])
def test_time_limit_format(bad):
    with pytest.raises(UserError, match="launcher.time"):
        parse_launcher(OmegaConf.create({"time": bad}), "slurm")
    assert parse_launcher(OmegaConf.create({"time": "1-12:00:00"}), "slurm").time == "1-12:00:00"


def test_launcher_is_selected_once():
    assert with_launcher_selected(["a=1"], "slurm") == ["+launcher=slurm", "a=1"]
    assert with_launcher_selected(["+launcher=k8s", "a=1"], "k8s") == ["+launcher=k8s", "a=1"]


def test_sizes():
    assert parse_size("8Gi") == 8 * 1024**3
    assert parse_size("512Mi") == 512 * 1024**2
    with pytest.raises(UserError, match="shm_size"):
        parse_size("8 gigs")
