"""The CUDA paths (NCCL, Lightning's stock DeepSpeed/FSDP strategies, bf16): the CPU tests' twins."""
from __future__ import annotations

import pytest
import torch

from tests.distributed.helpers import assert_same_curve, losses, ok, train

needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs CUDA (2 GPUs)")


@pytest.mark.gpu
@pytest.mark.slow
@needs_two_gpus
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_two_gpus_match_one_gpu_accumulating_two(strategy, tmp_path, shared_cache):
    common = ["trainer.accelerator=gpu", "trainer.precision=32-true", "trainer.max_steps=6", f"strategy={strategy}"]
    one, two = tmp_path / "one", tmp_path / "two"
    ok(train(one, shared_cache, *common, "trainer.devices=1", "trainer.accumulate_grad_batches=2"))
    ok(train(two, shared_cache, *common, "trainer.devices=2"))
    assert_same_curve(losses(two), losses(one), 1e-3)  # TF32/NCCL reduction order on GPU
