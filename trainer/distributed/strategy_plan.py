"""The strategy plan: everything a choice of `strategy` implies, decided once, in one place.

`make_plan` turns the typed strategy settings into a `StrategyPlan`:
- the Lightning strategy object (strategies.py builds it);
- how gradients are clipped: one implementation per family, chosen here
  (torch's global norm for single/ddp, FSDP's sharded global norm, DeepSpeed's engine);
- the extra callbacks the strategy needs;
- the checkpoint layout (one file or per-rank shards) and the metadata recorded with it;
- optimizer substitutions (DeepSpeed's CPU Adam when the optimizer state is offloaded);
- how a checkpoint from another layout is resumed (reshard.plan_resume decides, here it is applied).

Parallelism is applied from outside the model: nothing else in the trainer branches on the
strategy's name (the model, the LightningModule and fit.py take what the plan hands them).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import torch.nn as nn

from trainer.config import StrategyConfig
from trainer.errors import UserError


@dataclass
class StrategyPlan:
    name: str  # single | ddp | fsdp | deepspeed
    lightning_strategy: Any  # what pl.Trainer(strategy=...) takes
    callbacks: list = field(default_factory=list)  # strategy-specific callbacks (gradient clipping)
    sharded_checkpoint: bool = False  # the state is a directory of per-rank shards, not one file
    checkpoint_meta: dict = field(default_factory=dict)  # recorded in every checkpoint's manifest
    optimizer_class: Optional[Callable[..., Any]] = None  # replaces the module's AdamW (None: keep it)
    deepspeed_config: Optional[dict] = None  # the generated DeepSpeed JSON (saved in the run dir)

    def resume_state(self, info, *, world_size: int, global_batch: int) -> Path:
        """What to hand trainer.fit(ckpt_path=...) to resume `info` with this plan; converts
        (DeepSpeed universal checkpoint) or refuses (UserError) a checkpoint of another layout."""
        from trainer.checkpoint.reshard import plan_resume

        resume = plan_resume(info, strategy=self.name, zero_stage=self.checkpoint_meta.get("zero_stage"),
                             world_size=world_size, global_batch=global_batch)
        if resume.load_universal:
            self.lightning_strategy.config.setdefault("checkpoint", {})["load_universal"] = True
        return resume.state_path


def make_plan(
    s: StrategyConfig,
    *,
    net: nn.Module,
    on_gpu: bool,
    precision: str,
    world_size: int,
    micro_batch_size: int,
    accumulate: int,
    gradient_clip: float,
) -> StrategyPlan:
    if s.name == "single" and world_size > 1:
        raise UserError(f"launched with {world_size} processes but strategy=single; use strategy=ddp (or fsdp, deepspeed_*)")
    timeout = timedelta(seconds=s.timeout_s)
    backend = "nccl" if on_gpu else "gloo"
    if s.name == "single":
        return StrategyPlan("single", "auto", callbacks=_clipping(torch_global_norm, gradient_clip),
                            checkpoint_meta={"strategy": "single", "zero_stage": None})
    if s.name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        return StrategyPlan("ddp", DDPStrategy(process_group_backend=backend, timeout=timeout, find_unused_parameters=False),
                            callbacks=_clipping(torch_global_norm, gradient_clip),
                            checkpoint_meta={"strategy": "ddp", "zero_stage": None})
    if s.name == "fsdp":
        from trainer.distributed.fsdp import fsdp_global_norm, make_fsdp_strategy, repeated_block_types

        strategy = make_fsdp_strategy(on_gpu=on_gpu, sharding_strategy=s.fsdp_sharding, state_dict_type=s.fsdp_state_dict,
                                      process_group_backend=backend, timeout=timeout, wrap_types=repeated_block_types(net))
        # Lightning's FSDP precision plugin refuses norm clipping; FSDP's own clip_grad_norm_ sees every shard.
        return StrategyPlan("fsdp", strategy, callbacks=_clipping(fsdp_global_norm, gradient_clip),
                            sharded_checkpoint=s.fsdp_state_dict == "sharded",
                            checkpoint_meta={"strategy": "fsdp", "zero_stage": None})
    if s.name == "deepspeed":
        from trainer.distributed.deepspeed import deepspeed_json, make_deepspeed_strategy

        ds = deepspeed_json(s, micro_batch_size=micro_batch_size, accumulate=accumulate,
                            gradient_clip=gradient_clip, precision=precision)  # clipping happens inside the engine
        optimizer_class = None
        if s.offload_optimizer:
            # DeepSpeed's CPU Adam is the optimizer it expects when the optimizer state lives on the host.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer_class = functools.partial(DeepSpeedCPUAdam, adamw_mode=True)
        return StrategyPlan("deepspeed", make_deepspeed_strategy(ds, on_gpu=on_gpu, timeout=timeout, backend=backend),
                            sharded_checkpoint=True, checkpoint_meta={"strategy": "deepspeed", "zero_stage": s.zero_stage},
                            optimizer_class=optimizer_class, deepspeed_config=ds)
    raise UserError(f"unknown strategy {s.name!r}")  # validate() names the choices; a new strategy is added here


# --------------------------------------------------------------------------- gradient clipping
def torch_global_norm(trainer, pl_module, max_norm: float) -> None:
    """Global-norm clipping over every parameter this process holds whole (single, ddp): those its
    optimizers update, as Lightning's own clipping takes them (walking the module tree for
    .parameters() every step costs more host time than the clipping's launches)."""
    import torch

    if trainer is None:
        params = list(pl_module.parameters())
    else:
        params = [p for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


def _clipping(clip: Callable[[Any, Any, float], None], max_norm: float) -> list:
    """The clipping callback for a family's clip function; [] when clipping is off.

    It runs where Lightning's own clipping would, after the (last) backward of a step and after a
    16-mixed GradScaler has unscaled, before the optimizer step. Lightning's clipping is not used:
    its precision plugins refuse the fused AdamW (bf16) and norm clipping under FSDP.
    """
    if not max_norm:
        return []
    import pytorch_lightning as pl

    class GradientClipping(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            clip(trainer, pl_module, max_norm)

    return [GradientClipping()]
