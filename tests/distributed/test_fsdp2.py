"""FSDP2 applied from outside the model: every block sharded (and compiled, with trainer.compile=true),
the mixed-precision policy from the precision, and the whole-net compile left to the blocks."""
from __future__ import annotations

import copy

import pytest
import torch

from trainer.config import StrategyConfig
from trainer.distributed.fsdp2 import mixed_precision_policy, shard_net
from trainer.distributed.strategy_plan import make_plan
from trainer.models.gpt import GPT


def _plan(compile: bool):
    net = GPT(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2)
    return make_plan(StrategyConfig(name="fsdp2"), net=net, on_gpu=False, precision="32-true", world_size=2,
                     micro_batch_size=4, accumulate=1, gradient_clip=1.0, compile=compile), net


def test_the_plan_compiles_blocks_not_the_whole_net_and_saves_dcp_shards():
    plan, _ = _plan(compile=True)
    assert plan.name == "fsdp2" and not plan.compile_whole_net
    assert plan.sharded_checkpoint and plan.checkpoint_meta == {"strategy": "fsdp2", "zero_stage": None}
    assert type(plan.lightning_strategy).__mro__[1].__name__ == "ModelParallelStrategy"


def test_mixed_precision_policy_follows_the_precision():
    bf16 = mixed_precision_policy("bf16-mixed")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    assert mixed_precision_policy("32-true").param_dtype is None


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("compile_blocks", [False, True])
def test_sharded_blocks_train_like_the_plain_net(compile_blocks, one_rank_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    torch.manual_seed(0)
    plain = GPT(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2)
    sharded = copy.deepcopy(plain)
    assert shard_net(sharded, init_device_mesh("cpu", (1,)), precision="32-true", reshard_after_forward=True,
                     compile_blocks=compile_blocks, compile_mode="default") == 2
    assert all(isinstance(b, FSDPModule) for b in sharded.blocks) and isinstance(sharded, FSDPModule)
    assert all((b._compiled_call_impl is not None) == compile_blocks for b in sharded.blocks)
    ids = torch.randint(0, 64, (4, 17))
    for net in (plain, sharded):
        net(ids[:, :-1], ids[:, 1:]).backward()
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6)


def test_blocks_are_compiled_with_the_configured_mode(one_rank_group, monkeypatch):
    # The mode each block's compile is asked for (compiling is lazy: nothing runs here).
    from torch.distributed.device_mesh import init_device_mesh

    modes = []
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: (modes.append(kw.get("mode")), compile_(self, *a, **kw)))
    net = GPT(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2)
    shard_net(net, init_device_mesh("cpu", (1,)), precision="32-true", reshard_after_forward=True,
              compile_blocks=True, compile_mode="max-autotune-no-cudagraphs")
    assert modes == ["max-autotune-no-cudagraphs"] * 2
