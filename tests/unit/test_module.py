"""The LightningModule's own logic (decay groups, the schedule, any optimizer) and the plan's clipping."""
import functools
import math

import pytest
import torch

from trainer.distributed.strategy_plan import torch_global_norm
from trainer.models.gpt import GPT, GPTConfig
from trainer.module import TrainModule, WarmupCosineLR

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def _gpt():
    return GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosineLR(opt, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s.factor(0) == 0.1 and s.factor(9) == 1.0
    assert abs(s.factor(60) - 0.55) < 1e-9
    assert abs(s.factor(110) - 0.1) < 1e-9 and abs(s.factor(500) - 0.1) < 1e-9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # step 0 of the warmup


def test_weight_decay_only_on_matrices():
    opt = TrainModule(_gpt(), optimizer=ADAMW).configure_optimizers()
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_any_torch_optimizer_gets_the_same_groups_and_its_own_arguments():
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.01)
    sched = functools.partial(WarmupCosineLR, max_steps=10)
    out = TrainModule(_gpt(), optimizer=sgd, scheduler=sched).configure_optimizers()
    opt = out["optimizer"]
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 2
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(out["lr_scheduler"]["scheduler"], WarmupCosineLR) and out["lr_scheduler"]["interval"] == "step"


def test_gradient_clipping_bounds_the_global_norm_and_returns_it_before_clipping():
    m = TrainModule(torch.nn.Linear(4, 4), optimizer=ADAMW)
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = torch_global_norm(None, m, 1.0)
    assert before.item() == pytest.approx(10.0 * math.sqrt(20), rel=1e-5)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters()))
    assert abs(total.item() - 1.0) < 1e-4
    assert torch_global_norm(None, m, math.inf).item() == pytest.approx(1.0, rel=1e-4)  # measure only: unchanged
    assert torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters())).item() == pytest.approx(1.0, rel=1e-4)
