"""The LightningModule: loss, optimizer groups, schedule and metrics around any plain nn.Module.

Model convention (GPT and MLPClassifier follow it; so can yours): `net(inputs, targets)`
returns the mean loss, `net(inputs)` returns outputs, and an optional
`net.evaluate(inputs, targets) -> dict[str, Tensor]` adds validation metrics.
Batches are `(inputs, targets)`.
"""
from __future__ import annotations

import math
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn


class TrainModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 20,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        max_steps: int = 1000,
        compile: bool = False,
    ):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.warmup_steps, self.schedule, self.min_lr_ratio = warmup_steps, schedule, min_lr_ratio
        self.max_steps = max_steps
        self.compile = compile
        self._compiled: nn.Module | None = None
        # Weight decay on matrices (linear and embedding weights) only; not on norms or biases. Decided
        # here, on the plain net: under FSDP the parameters seen by configure_optimizers are flat shards.
        self._decay_names = {n for n, p in net.named_parameters() if p.dim() >= 2}

    def configure_model(self) -> None:
        # torch.compile is applied from outside the model, after the strategy has wrapped/moved it.
        if self.compile and self._compiled is None:
            self._compiled = torch.compile(self.net)

    def forward(self, inputs, targets=None):
        net = self._compiled if self._compiled is not None else self.net
        return net(inputs, targets) if targets is not None else net(inputs)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = self(inputs, targets)
        self.log("train/loss", self._step_mean_loss(loss), prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _step_mean_loss(self, loss):
        """The mean loss of this optimizer step so far, over its micro-batches; sync_dist then
        averages the ranks. So train/loss is the global batch's loss whatever the world size and
        accumulation (1 process accumulating 2 logs what 2 processes log)."""
        step = self.trainer.global_step if self._trainer is not None else 0
        if getattr(self, "_loss_step", None) != step:
            self._loss_step, self._loss_sum, self._loss_count = step, 0.0, 0
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1
        return self._loss_sum / self._loss_count

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = self(inputs, targets)
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        evaluate = getattr(self.net, "evaluate", None)
        if evaluate is not None:
            for name, value in evaluate(inputs, targets).items():
                self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            (decay if _unwrapped_name(name) in self._decay_names else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = self._make_optimizer(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _make_optimizer(self, groups):
        strategy = getattr(self.trainer, "strategy", None) if self._trainer is not None else None
        ds_cfg = getattr(strategy, "config", None)
        offload = bool(ds_cfg and ds_cfg.get("zero_optimization", {}).get("offload_optimizer"))
        if offload:
            # DeepSpeed's CPU Adam is the optimizer it expects when optimizer state lives on the host.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=self.lr, betas=self.betas, eps=self.eps, adamw_mode=True)
        # The fused CUDA AdamW is the fastest; it unscales fp16 gradients inside step(), so with a
        # 16-mixed GradScaler clipping would see scaled gradients: use it for fp32/bf16 only.
        precision = str(getattr(self.trainer, "precision", "")) if self._trainer is not None else ""
        fused = self.device.type == "cuda" and not precision.startswith("16")
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps, fused=fused or None)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm. Done here rather than through Lightning's precision plugin, which
        refuses optimizers that unscale internally (the fused AdamW) even in bf16, where nothing is
        scaled; with a 16-mixed scaler the optimizer is not fused and Lightning has unscaled already."""
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then cosine to min_lr_ratio at max_steps (or constant)."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _unwrapped_name(name: str) -> str:
    """A parameter's name in the plain net: FSDP and activation checkpointing insert wrapper modules."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name
