"""The LightningModule's own logic (decay groups, the schedule) and the plan's clipping."""
from dataclasses import asdict

import torch

from trainer.config import OptimConfig
from trainer.distributed.strategy_plan import torch_global_norm
from trainer.models.gpt import GPT, GPTConfig
from trainer.module import TrainModule


def _module(net, max_steps=100, **optim):
    return TrainModule(net, **{**asdict(OptimConfig()), **optim}, max_steps=max_steps)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    m = _module(torch.nn.Linear(2, 2), warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert m.lr_factor(0) == 0.1 and m.lr_factor(9) == 1.0
    assert abs(m.lr_factor(60) - 0.55) < 1e-9
    assert abs(m.lr_factor(110) - 0.1) < 1e-9 and abs(m.lr_factor(500) - 0.1) < 1e-9


def test_weight_decay_only_on_matrices():
    net = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    opt = _module(net, weight_decay=0.1).configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_a_substituted_optimizer_class_is_used_with_the_same_groups():
    net = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    opt = TrainModule(net, **asdict(OptimConfig()), max_steps=10, optimizer_class=torch.optim.Adam).configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 2


def test_gradient_clipping_bounds_the_global_norm():
    m = _module(torch.nn.Linear(4, 4))
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    torch_global_norm(None, m, 1.0)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters()))
    assert abs(total.item() - 1.0) < 1e-4
