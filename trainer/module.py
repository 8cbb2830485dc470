"""The LightningModule: loss, optimizer groups, schedule and metrics around any plain nn.Module,
and the default LR schedule (warmup, then cosine).

Model convention (GPT and MLPClassifier follow it; so can yours): `net(inputs, targets)`
returns the mean loss, `net(inputs)` returns outputs, and an optional
`net.evaluate(inputs, targets) -> dict[str, Tensor]` adds validation metrics.
Batches are `(inputs, targets)`.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn as nn


class TrainModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        compile: bool = False,
        compile_mode: str = "default",
    ):
        """`optimizer` is called with the parameter groups (the `optim` section: a `_partial_` torch.optim
        class, or the strategy plan's substitute); `scheduler`, when given, with the optimizer, and is
        stepped every optimizer step (the `scheduler` section)."""
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.compile, self.compile_mode = compile, compile_mode
        self._compiled: nn.Module | None = None
        # Weight decay on matrices (linear and embedding weights) only; not on norms or biases. Decided
        # here, on the plain net: under FSDP the parameters seen by configure_optimizers are flat shards.
        self._decay_names = {_unwrapped_name(n) for n, p in net.named_parameters() if p.dim() >= 2}

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
        # The decay group takes the optimizer's own weight_decay (optim.weight_decay).
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups, **self._fused_if_better())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def _fused_if_better(self) -> dict:
        """fused=True for an optimizer that offers it and was not told otherwise, on CUDA: the fused
        AdamW is the fastest. It unscales fp16 gradients inside step(), so with a 16-mixed GradScaler
        clipping would see scaled gradients: fp32/bf16 only."""
        precision = str(getattr(self.trainer, "precision", "")) if self._trainer is not None else ""
        if self.device.type != "cuda" or precision.startswith("16"):
            return {}
        factory = self.optimizer_factory
        func, given = (factory.func, factory.keywords) if isinstance(factory, functools.partial) else (factory, {})
        try:
            accepts = "fused" in inspect.signature(func).parameters
        except (TypeError, ValueError):
            return {}
        return {"fused": True} if accepts and given.get("fused") is None else {}


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warmup to the optimizer's lr over `warmup_steps`, then cosine decay to lr * min_lr_ratio
    at `max_steps` (min_lr_ratio=1: warmup, then constant)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int = 20, min_lr_ratio: float = 0.1):
        self.check_config(max_steps=max_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
        self.max_steps, self.warmup_steps, self.min_lr_ratio = max_steps, warmup_steps, min_lr_ratio
        super().__init__(optimizer, self.factor)

    @classmethod
    def check_config(cls, max_steps: int = 1, warmup_steps: int = 20, min_lr_ratio: float = 0.1, **_) -> None:
        if max_steps is None or max_steps <= 0:
            raise ValueError(f"scheduler.max_steps must be positive, got {max_steps}")
        if warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _unwrapped_name(name: str) -> str:
    """A parameter's name in the plain net: FSDP and activation checkpointing insert wrapper modules."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name
