"""Pure pieces of the lifecycle: the promotion rule, the decision log's chain, config checks, PSI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.errors import UserError
from trainer.config import PipelineConfig, PromoteConfig, check_pipeline_config, check_promote_config
from trainer.lifecycle.promote import decide
from trainer.lifecycle.registry import DecisionLog


def test_promotion_rule_is_strict_improvement_beyond_min_delta():
    p = PromoteConfig(min_delta=0.01)
    assert decide(2.0, 2.02, p)[0] == "promoted"  # better by 0.02 > 0.01
    assert decide(2.0, 2.01, p)[0] == "refused"  # better by exactly min_delta: not enough
    assert decide(2.0, 1.9, p)[0] == "refused"
    assert decide(2.0, 2.0, PromoteConfig())[0] == "refused"  # a tie never replaces the champion
    assert decide(2.0, None, PromoteConfig(max_loss=2.0))[0] == "promoted"  # the bar is inclusive
    assert decide(2.1, None, PromoteConfig(max_loss=2.0))[0] == "refused"
    decision, why = decide(1.0, 2.0, PromoteConfig(require_approval=True))
    assert decision == "pending" and "approval" in why and "1.000000" in why and "2.000000" in why


def test_decision_log_chain_detects_an_edited_line(tmp_path):
    log = DecisionLog(tmp_path / "decisions.jsonl")
    for i in range(3):
        log.append({"version": i, "decision": "promoted"})
    assert log.verify() == [] and [r["version"] for r in log.records()] == [0, 1, 2]
    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["decision"] = "refused"
    lines[1] = json.dumps(edited, sort_keys=True)
    log.path.write_text("\n".join(lines) + "\n")
    assert log.verify() == ["line 3: its prev_sha256 does not match line 2"]


def test_bad_lifecycle_settings_name_the_key():
    with pytest.raises(UserError, match=r"promote.metric='accuracy' is not one of loss, bits_per_byte"):
        check_promote_config(PromoteConfig(metric="accuracy"))
    with pytest.raises(UserError, match=r"promote.min_delta must be >= 0"):
        check_promote_config(PromoteConfig(min_delta=-1))
    with pytest.raises(UserError, match=r"out of order"):
        check_pipeline_config(PipelineConfig(steps=["train", "data_check"]))
    with pytest.raises(UserError, match=r"pipeline.trigger=drift needs pipeline.drift_reference"):
        check_pipeline_config(PipelineConfig(trigger="drift"))
    with pytest.raises(UserError, match=r"pipeline.stop_after='export' is not one of the steps"):
        check_pipeline_config(PipelineConfig(steps=["train"], stop_after="export"))


def test_psi_is_zero_for_one_distribution_and_large_for_a_shift():
    from trainer.lifecycle.drift import psi

    rng = np.random.default_rng(0)
    a = rng.lognormal(6, 1, 20_000)
    assert psi(a, rng.lognormal(6, 1, 20_000), 10) < 0.01
    assert psi(a, rng.lognormal(7, 1, 20_000), 10) > 0.5


def test_key_value_arguments_are_typed_from_the_schema():
    from trainer.cli_args import keys_of
    from trainer.config import RegistryConfig

    keys = keys_of("promote", PromoteConfig) | keys_of("registry", RegistryConfig)
    assert keys["promote.max_loss"]("null") is None and keys["promote.max_loss"]("2.5") == 2.5
    assert keys["promote.require_approval"]("true") is True and keys["registry.wandb_link"]("off") is False
    with pytest.raises(ValueError):
        keys["promote.min_delta"]("a lot")


@pytest.mark.parametrize("module", ["trainer.promote", "trainer.drift", "trainer.reproduce", "trainer.pipeline",
                                    "trainer.data_check"])
def test_help_prints_the_usage_and_exits_0(module):
    import importlib

    from tests.conftest import cli

    usage = importlib.import_module(module).__doc__.strip()
    for flag in (["--help"], ["x=1", "-h"]):  # anywhere on the line, before any argument is judged
        proc = cli(module, *flag, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == usage and f"python -m {module}" in proc.stdout


def test_the_training_step_of_a_one_task_slurm_pipeline_starts_its_own_ranks(monkeypatch):
    from trainer.distributed.env import detect
    from trainer.lifecycle.pipeline import _train_env

    task = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "retrain", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1"}
    for k, v in task.items():
        monkeypatch.setenv(k, v)
    assert detect().launcher == "slurm"  # as srun --ntasks=1 starts the pipeline
    env = _train_env()
    assert detect(env).launcher is None and env["SLURM_JOB_ID"] == "7"  # trainer.devices ranks of its own
    monkeypatch.setenv("SLURM_NTASKS", "8")  # one of several tasks: each is a rank, left as it is
    assert detect(_train_env()) == detect()
