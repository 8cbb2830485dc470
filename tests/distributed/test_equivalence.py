"""2 processes = 1 process accumulating 2 micro-batches: the same loss curve, for every strategy.

Real processes: `trainer.devices=2` starts 2 ranks over gloo through torchrun from the frozen
config. The reference is the plain single-process trainer with trainer.accumulate_grad_batches=2:
the same global batch, the same samples (step-indexed sampling), the same optimizer.
"""
from __future__ import annotations

import json

import pytest
import yaml

from tests.distributed.helpers import assert_same_curve, losses, ok, train

STEPS = 8

# strategy option -> allowed relative difference per step (fp32 on CPU)
TOLERANCE = {
    "ddp": 1e-5,
    "deepspeed_zero1": 1e-5,
    "deepspeed_zero2": 1e-5,
    "deepspeed_zero3": 1e-4,
    "fsdp": 1e-4,
    "deepspeed_zero3_offload": 1e-4,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_cache):
    run = tmp_path_factory.mktemp("reference") / "run"
    ok(train(run, shared_cache, f"trainer.max_steps={STEPS}", "trainer.accumulate_grad_batches=2"))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(TOLERANCE))
def test_two_ranks_match_one_rank_accumulating_two(strategy, reference, tmp_path, shared_cache):
    run = tmp_path / "run"
    proc = ok(train(run, shared_cache, f"trainer.max_steps={STEPS}", f"strategy={strategy}", "trainer.devices=2"))
    want = losses(reference)
    assert sorted(want) == list(range(STEPS))
    assert_same_curve(losses(run), want, TOLERANCE[strategy])
    # One run dir, one resolved config, one manifest; only rank 0 printed the summary.
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["devices"] == 2
    assert json.loads((run / "manifest.json").read_text())["summary"]["steps"] == STEPS
    assert proc.stdout.count("run summary") == 1
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    if strategy.startswith("deepspeed"):
        ds = json.loads((run / "deepspeed_config.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(strategy[len("deepspeed_zero")])
        assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 1.0
