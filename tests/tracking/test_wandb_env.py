"""WANDB_PROJECT and WANDB_ENTITY work: the config's project and entity reach wandb.init only when set, so
W&B's own environment variables decide otherwise."""
from __future__ import annotations

import pytest

from trainer.tracking.loggers import DEFAULT_PROJECT, WandbLogger


@pytest.fixture
def no_wandb_env(monkeypatch):
    for key in ("WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def init_args(tmp_path, **kwargs) -> dict:
    return WandbLogger(save_dir=str(tmp_path), mode="offline", id="abcd1234", name="t", **kwargs)._wandb_init


def test_project_comes_from_the_config_else_wandb_project_else_the_default(tmp_path, no_wandb_env):
    assert init_args(tmp_path)["project"] == DEFAULT_PROJECT
    no_wandb_env.setenv("WANDB_PROJECT", "from-env")
    assert init_args(tmp_path)["project"] == "from-env"
    assert init_args(tmp_path, project="from-config")["project"] == "from-config"


def test_entity_is_passed_only_when_the_config_sets_it(tmp_path, no_wandb_env):
    """No entity key at all when unset: an explicit entity=None would not let W&B read WANDB_ENTITY."""
    no_wandb_env.setenv("WANDB_ENTITY", "team-from-env")
    assert "entity" not in init_args(tmp_path)
    assert init_args(tmp_path, entity="team-from-config")["entity"] == "team-from-config"


def test_a_real_offline_run_takes_project_and_entity_from_the_environment(tmp_path, no_wandb_env):
    no_wandb_env.setenv("WANDB_PROJECT", "from-env")
    no_wandb_env.setenv("WANDB_ENTITY", "team-from-env")
    no_wandb_env.setenv("WANDB_DIR", str(tmp_path))
    run = WandbLogger(save_dir=str(tmp_path), mode="offline", id="abcd1234", name="t").experiment
    try:
        assert (run.project, run.entity) == ("from-env", "team-from-env")
    finally:
        run.finish()
