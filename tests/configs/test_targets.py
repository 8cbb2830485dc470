"""Lightning-Hydra habits: optimizer and scheduler as `_partial_` targets, loggers and callbacks as named
`_target_` entries, extra pl.Trainer arguments, your own config directory, a DeepSpeed JSON file."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from trainer.config import compose_config
from trainer.errors import UserError


def test_any_torch_optimizer_and_its_own_arguments_without_plus():
    cfg = compose_config(["optim=sgd", "optim.dampening=0.0", "optim.lr=0.05"])
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.lr == 0.05 and cfg.optim.nesterov is True
    assert cfg.optim.dampening == 0.0 and cfg.optim.maximize is False  # the rest: the class's own defaults, frozen
    with pytest.raises(UserError, match=r"optim.betas' for torch.optim.SGD"):
        compose_config(["optim._target_=torch.optim.SGD"])  # AdamW's betas do not fit SGD: say which key
    with pytest.raises(UserError, match=r"invalid 'optim' config for torch.optim.AdamW: Invalid beta parameter"):
        compose_config(["optim.betas=[1.5,0.9]"])  # the class's own checks, before anything is built


def test_the_schedule_is_a_partial_target_too():
    assert compose_config([]).scheduler.max_steps == 400  # wired to trainer.max_steps
    assert compose_config(["scheduler=constant"]).scheduler.min_lr_ratio == 1.0
    assert compose_config(["scheduler=none"]).scheduler is None
    with pytest.raises(UserError, match="scheduler.warmup_steps must be >= 0"):
        compose_config(["scheduler.warmup_steps=-1"])
    # another scheduler from the command line: only the YAML's own wiring (max_steps) has to go
    cfg = compose_config(["scheduler._target_=torch.optim.lr_scheduler.StepLR", "~scheduler.max_steps",
                          "scheduler.step_size=10"])
    from hydra.utils import instantiate

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(instantiate(cfg.scheduler)(opt), torch.optim.lr_scheduler.StepLR)


def test_loggers_are_named_entries_with_their_arguments_settable():
    cfg = compose_config(["logger.wandb.project=proj", "logger.wandb.mode=offline", "logger.wandb.tags=[a,b]"])
    assert (cfg.logger.wandb.project, cfg.logger.wandb.mode, list(cfg.logger.wandb.tags)) == ("proj", "offline", ["a", "b"])
    assert sorted(compose_config(["logger=[csv,tensorboard]"]).logger) == ["csv", "tensorboard"]
    assert compose_config(["logger.wandb=false"]).logger.wandb is False
    with pytest.raises(UserError, match=r"logger.wandb.projekt.*Did you mean 'project'"):
        compose_config(["logger.wandb.projekt=x"])
    with pytest.raises(UserError, match="logger.wandb.mode='sometimes' is not one of"):
        compose_config(["logger.wandb.mode=sometimes"])
    with pytest.raises(UserError, match=r"logger.csv must be a \{_target_: ...\} entry, true \(the shipped one\) or false"):
        compose_config(["logger.csv=3"])


def test_an_entry_turned_off_is_turned_on_again_as_shipped_with_keys_set_after_it():
    on = compose_config(["logger.wandb=false", "logger.wandb=true"]).logger.wandb
    assert on._target_ == "trainer.tracking.loggers.WandbLogger" and on.mode == "auto"
    offline = compose_config(["logger.wandb=false", "logger.wandb=true", "logger.wandb.mode=offline"]).logger.wandb
    assert offline._target_ == on._target_ and offline.mode == "offline" and offline.flush_interval_s == on.flush_interval_s
    with pytest.raises(UserError, match=r"logger.nope=true: no shipped logger entry named 'nope' \(shipped: csv, tensorboard, wandb\)"):
        compose_config(["+logger.nope=true"])


def test_callbacks_are_named_entries_users_add_to():
    from hydra.utils import instantiate

    cfg = compose_config(["callbacks=early_stopping", "+callbacks.probe._target_=tests.fixtures.callbacks.StepProbe",
                          "+callbacks.probe.path=/tmp/x"])
    made = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    assert type(made["early_stopping"]).__name__ == "EarlyStopping" and made["early_stopping"].monitor == "val/loss"
    assert made["probe"].path.name == "x"
    with pytest.raises(UserError, match=r"callbacks.bad._target_='no.such.Callback' cannot be imported"):
        compose_config(["+callbacks.bad._target_=no.such.Callback"])


def test_extra_trainer_arguments_pass_through_checked_against_pl_trainer():
    assert compose_config(["trainer.extra.limit_val_batches=2"]).trainer.extra.limit_val_batches == 2
    with pytest.raises(UserError, match=r"trainer.extra.limit_val_batchs is not a pl.Trainer argument.*limit_val_batches"):
        compose_config(["+trainer.extra.limit_val_batchs=2"])
    with pytest.raises(UserError, match=r"trainer.extra.devices is set by the trainer itself; use trainer.devices"):
        compose_config(["trainer.extra.devices=2"])


def test_your_config_dir_adds_options_and_a_local_file(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nrun:\n  name: mine\ntrainer:\n  max_steps: 7\n")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  runs_dir: /scratch/runs\n")
    cfg = compose_config(["experiment=mine"], config_dirs=[str(tmp_path)])
    assert (cfg.run.name, cfg.trainer.max_steps, cfg.paths.runs_dir) == ("mine", 7, "/scratch/runs")
    assert compose_config(["experiment=gpt2_124m"], config_dirs=[str(tmp_path)]).run.name == "gpt2_124m"  # shipped ones stay
    with pytest.raises(UserError, match="--config-dir .*nope: no such directory"):
        compose_config([], config_dirs=[str(tmp_path / "nope")])


def test_a_deepspeed_json_file_is_read_into_the_config(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1234}, "steps_per_print": 7}))
    cfg = compose_config(["strategy=deepspeed_zero2", "trainer.devices=2", f"strategy.deepspeed_config={ds}"])
    assert OmegaConf.to_container(cfg.strategy.deepspeed_config)["zero_optimization"]["reduce_bucket_size"] == 1234
    from trainer.build import typed
    from trainer.config import StrategyConfig
    from trainer.distributed.deepspeed import deepspeed_json

    merged = deepspeed_json(typed(StrategyConfig, cfg.strategy), micro_batch_size=2, accumulate=1, gradient_clip=1.0,
                            precision="32-true")
    assert merged["zero_optimization"]["reduce_bucket_size"] == 1234 and merged["zero_optimization"]["stage"] == 2
    assert merged["steps_per_print"] == 7
