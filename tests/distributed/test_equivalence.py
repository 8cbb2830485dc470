"""2 processes = 1 process accumulating 2 micro-batches: the same loss curve, for every strategy,
across a stop and resume at step 4 (so every strategy also saves and resumes).

The reference is the plain single-process trainer with trainer.accumulate_grad_batches=2: the
same global batch, the same samples (step-indexed sampling), the same optimizer.
"""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.distributed.conftest import SPLIT, STEPS
from tests.distributed.helpers import assert_same_curve, losses

# strategy option -> allowed relative difference per step (fp32 on CPU)
TOLERANCE = {
    "ddp": 1e-5,
    "deepspeed_zero1": 1e-5,
    "deepspeed_zero2": 1e-5,
    "deepspeed_zero3": 1e-4,
    "fsdp": 1e-4,
    "fsdp2": 1e-4,
    "deepspeed_zero3_offload": 1e-4,
}


# The default suite runs ddp, ZeRO-2, ZeRO-3 and fsdp2; the other variants of the same engines are extended.
EXTENDED = {"deepspeed_zero1", "fsdp", "deepspeed_zero3_offload"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.extended) if s in EXTENDED else s for s in TOLERANCE])
def test_two_ranks_match_one_rank_accumulating_two(strategy, runs):
    want = losses(runs.reference())
    assert sorted(want) == list(range(STEPS))
    run = runs.two_ranks(strategy)
    assert_same_curve(losses(run), want, TOLERANCE[strategy])
    # One run dir, one resolved config, one manifest, one log per rank.
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["devices"] == 2
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["steps"] == STEPS and summary["steps_this_session"] == STEPS - SPLIT
    assert sorted(p.name for p in (run / "logs").iterdir() if p.suffix == ".log") == ["rank0.log", "rank1.log"]
    # the metrics beside the loss, from the strategy's own clipping (DeepSpeed: its engine's norm)
    rows = [r for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("train/loss")]
    assert rows and all(float(r["train/grad_norm"]) > 0 and float(r["train/lr"]) > 0 for r in rows), strategy
    if strategy.startswith("deepspeed"):
        ds = json.loads((run / "deepspeed_config.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(strategy[len("deepspeed_zero")])
        assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 1.0
        assert ("offload_optimizer" in ds["zero_optimization"]) == strategy.endswith("offload")
