"""The LightningModule: loss, optimizer groups, schedule and metrics around any plain nn.Module.

Model convention (GPT and MLPClassifier follow it; so can yours): `net(inputs, targets)`
returns the mean loss, `net(inputs)` returns outputs, and an optional
`net.evaluate(inputs, targets) -> dict[str, Tensor]` adds validation metrics.
Batches are `(inputs, targets)`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn


class TrainModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        betas: Sequence[float],
        eps: float,
        warmup_steps: int,
        schedule: str,
        min_lr_ratio: float,
        max_steps: int,
        compile: bool = False,
        compile_mode: str = "default",
        optimizer_class: Callable[..., torch.optim.Optimizer] | None = None,
    ):
        """The optimizer settings are the `optim` section (trainer/config/schema.py OptimConfig holds the
        defaults); `optimizer_class` replaces AdamW when the strategy plan substitutes one (CPU Adam
        under DeepSpeed offload), called as optimizer_class(param_groups, lr=, betas=, eps=)."""
        super().__init__()
        self.net = net
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.warmup_steps, self.schedule, self.min_lr_ratio = warmup_steps, schedule, min_lr_ratio
        self.max_steps = max_steps
        self.compile, self.compile_mode = compile, compile_mode
        self.optimizer_class = optimizer_class
        self._compiled: nn.Module | None = None
        # Weight decay on matrices (linear and embedding weights) only; not on norms or biases. Decided
        # here, on the plain net: under FSDP the parameters seen by configure_optimizers are flat shards.
        self._decay_names = {n for n, p in net.named_parameters() if p.dim() >= 2}

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets _current_fx_name around every hook call (~50 times a step); nn.Module's
        # __setattr__ checks each value against Parameter, Module and buffer first (~6 us each here).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_model(self) -> None:
        # torch.compile is applied from outside the model, after the strategy has wrapped/moved it.
        if self.compile and self._compiled is None:
            self._compiled = torch.compile(self.net, mode=None if self.compile_mode == "default" else self.compile_mode)

    def forward(self, inputs, targets=None):
        net = self._compiled if self._compiled is not None else self.net
        return net(inputs, targets) if targets is not None else net(inputs)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = self(inputs, targets)
        self._step_mean_loss(loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # train/loss is handed to Lightning only on the batches whose metrics it writes (every
        # trainer.log_every_steps steps, and a step that stops the run) and on the last step (the run
        # summary's final loss): each self.log call costs ~1 ms of host time in Lightning's result
        # collection and, with several ranks, an all-reduce. Here, after the callbacks' batch end (a
        # checkpoint callback may just have stopped the run), Lightning's decision for the batch is known.
        # Not prog_bar: Lightning converts progress-bar metrics to floats after every batch (.item(): on
        # a GPU, a wait for all queued work, every step); the progress bar reads the loss on the logging
        # cadence instead (trainer/tracking/console.py).
        if self._logs_this_batch():
            self.log("train/loss", self._loss_sum / self._loss_count, on_step=True, on_epoch=False, sync_dist=True)

    def _logs_this_batch(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        try:
            if trainer.fit_loop._should_accumulate():
                return False
            return trainer._logger_connector.should_update_logs or 0 < trainer.max_steps <= trainer.global_step
        except AttributeError:  # a Lightning without these internals: log every batch, as before
            return True

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
        if self.optimizer_class is not None:
            return self.optimizer_class(groups, lr=self.lr, betas=self.betas, eps=self.eps)
        # The fused CUDA AdamW is the fastest; it unscales fp16 gradients inside step(), so with a
        # 16-mixed GradScaler clipping would see scaled gradients: use it for fp32/bf16 only.
        precision = str(getattr(self.trainer, "precision", "")) if self._trainer is not None else ""
        fused = self.device.type == "cuda" and not precision.startswith("16")
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps, fused=fused or None)

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
