"""The strategy plan: everything a choice of `strategy` implies, decided once, in one place.

`make_plan` turns the typed strategy settings into a `StrategyPlan`:
- the Lightning strategy object (its builder module in distributed/ makes it);
- activation checkpointing of each transformer block, applied to the net before any wrapping;
- how gradients are clipped: one implementation per family, chosen here
  (torch's global norm for single/ddp and over FSDP2's DTensors, FSDP's sharded global norm,
  DeepSpeed's engine), and the gradient norm before clipping logged from it (train/grad_norm;
  DeepSpeed also train/loss_scale);
- the extra callbacks the strategy needs;
- the checkpoint layout (one file or per-rank shards) and the metadata recorded with it;
- optimizer substitutions (DeepSpeed's CPU Adam when the optimizer state is offloaded);
- how a checkpoint from another layout is resumed (reshard.plan_resume decides, here it is applied);
- where torch.compile applies (the whole net, or each block under FSDP2).

Parallelism is applied from outside the model: nothing else in the trainer branches on the
strategy's name (the model, the LightningModule and fit.py take what the plan hands them).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import torch.nn as nn

from trainer.checkpoint.async_writer import defer_checkpoint_io, defer_distributed_checkpoint
from trainer.config import StrategyConfig
from trainer.errors import UserError

log = logging.getLogger("trainer")


@dataclass
class StrategyPlan:
    name: str  # single | ddp | fsdp | fsdp2 | deepspeed
    lightning_strategy: Any  # what pl.Trainer(strategy=...) takes
    callbacks: list = field(default_factory=list)  # strategy-specific callbacks (gradient clipping and norm)
    sharded_checkpoint: bool = False  # the state is a directory of per-rank shards, not one file
    checkpoint_meta: dict = field(default_factory=dict)  # recorded in every checkpoint's manifest
    optimizer_class: Optional[Callable[..., Any]] = None  # replaces the module's AdamW (None: keep it)
    deepspeed_config: Optional[dict] = None  # the generated DeepSpeed JSON (saved in the run dir)
    compile_whole_net: bool = True  # trainer.compile compiles the whole net (False: the strategy compiles blocks)
    # checkpoint.async=true: how this strategy's checkpoint writes are captured (staged to host memory) and
    # deferred to the background, called as defer_writes(lightning_strategy, deferred, process_group)
    defer_writes: Callable[[Any, Any, Any], None] = defer_checkpoint_io

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
    activation_checkpointing: str = "none",
    compile: bool = False,
    compile_mode: str = "default",
) -> StrategyPlan:
    if s.name == "single" and world_size > 1:
        raise UserError(f"launched with {world_size} processes but strategy=single; use strategy=ddp (or fsdp, fsdp2, deepspeed_*)")
    from trainer.distributed.activation_checkpointing import apply_activation_checkpointing

    # Before any strategy wraps or shards the net, so every strategy sees the same checkpointed blocks.
    wrapped = apply_activation_checkpointing(net, activation_checkpointing)
    if activation_checkpointing != "none":  # the count shows the setting took effect (tests read it)
        log.info("activation checkpointing %s: %d blocks wrapped", activation_checkpointing, wrapped)
    timeout = timedelta(seconds=s.timeout_s)
    backend = "nccl" if on_gpu else "gloo"
    if s.name == "single":
        return StrategyPlan("single", "auto", callbacks=_clipping(torch_global_norm, gradient_clip),
                            checkpoint_meta={"strategy": "single", "zero_stage": None})
    if s.name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        # gradient_as_bucket_view: the gradients are views into DDP's communication buckets, not a second copy.
        return StrategyPlan("ddp", DDPStrategy(process_group_backend=backend, timeout=timeout, find_unused_parameters=False,
                                               gradient_as_bucket_view=True),
                            callbacks=_clipping(torch_global_norm, gradient_clip),
                            checkpoint_meta={"strategy": "ddp", "zero_stage": None})
    if s.name == "fsdp":
        from trainer.distributed.fsdp import fsdp_global_norm, make_fsdp_strategy, repeated_block_types

        strategy = make_fsdp_strategy(on_gpu=on_gpu, sharding_strategy=s.fsdp_sharding, state_dict_type=s.fsdp_state_dict,
                                      process_group_backend=backend, timeout=timeout, wrap_types=repeated_block_types(net))
        # Lightning's FSDP precision plugin refuses norm clipping; FSDP's own clip_grad_norm_ sees every shard.
        sharded = s.fsdp_state_dict == "sharded"
        return StrategyPlan("fsdp", strategy, callbacks=_clipping(fsdp_global_norm, gradient_clip),
                            sharded_checkpoint=sharded, checkpoint_meta={"strategy": "fsdp", "zero_stage": None},
                            defer_writes=functools.partial(defer_distributed_checkpoint, weights_key="model")
                            if sharded else defer_checkpoint_io)
    if s.name == "fsdp2":
        from trainer.distributed.fsdp2 import make_fsdp2_strategy

        strategy = make_fsdp2_strategy(net, world_size=world_size, precision=precision,
                                       reshard_after_forward=s.fsdp2_reshard_after_forward, compile_blocks=compile,
                                       compile_mode=compile_mode, process_group_backend=backend, timeout=timeout)
        # clip_grad_norm_ over DTensor gradients reduces the norm across the shards itself.
        return StrategyPlan("fsdp2", strategy, callbacks=_clipping(torch_global_norm, gradient_clip),
                            sharded_checkpoint=True, checkpoint_meta={"strategy": "fsdp2", "zero_stage": None},
                            compile_whole_net=False,
                            defer_writes=functools.partial(defer_distributed_checkpoint, weights_key="state_dict"))
    if s.name == "deepspeed":
        from trainer.distributed.deepspeed import EngineMetrics, deepspeed_json, defer_engine_writes, make_deepspeed_strategy

        ds = deepspeed_json(s, micro_batch_size=micro_batch_size, accumulate=accumulate,
                            gradient_clip=gradient_clip, precision=precision)  # clipping happens inside the engine
        optimizer_class = None
        if s.offload_optimizer:
            # DeepSpeed's CPU Adam is the optimizer it expects when the optimizer state lives on the host.
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer_class = functools.partial(DeepSpeedCPUAdam, adamw_mode=True)
        return StrategyPlan("deepspeed", make_deepspeed_strategy(ds, on_gpu=on_gpu, timeout=timeout, backend=backend),
                            callbacks=[EngineMetrics()], sharded_checkpoint=True, checkpoint_meta={"strategy": "deepspeed", "zero_stage": s.zero_stage},
                            optimizer_class=optimizer_class, deepspeed_config=ds, defer_writes=defer_engine_writes)
    raise UserError(f"unknown strategy {s.name!r}")  # validate() names the choices; a new strategy is added here


# --------------------------------------------------------------------------- gradient clipping
def torch_global_norm(trainer, pl_module, max_norm: float):
    """Global-norm clipping over every parameter this process holds whole (single, ddp): those its
    optimizers update, as Lightning's own clipping takes them (walking the module tree for .parameters()
    every step costs more host time than the clipping's launches). Returns the norm before clipping;
    max_norm=inf measures only."""
    import math

    import torch

    if trainer is None:
        params = list(pl_module.parameters())
    else:
        params = [p for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]]
    if math.isinf(max_norm):
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _clipping(clip: Callable[[Any, Any, float], Any], max_norm: float) -> list:
    """The clipping callback for a family's clip function: clips to max_norm (0: measures only) and
    logs the global gradient norm before clipping as train/grad_norm.

    It runs where Lightning's own clipping would, after the (last) backward of a step and after a
    16-mixed GradScaler has unscaled, before the optimizer step. Lightning's clipping is not used:
    its precision plugins refuse the fused AdamW (bf16) and norm clipping under FSDP.
    """
    import math

    import pytorch_lightning as pl

    class GradientClipping(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            norm = clip(trainer, pl_module, max_norm or math.inf)
            if norm is not None:  # a tensor: read only when the loggers write (no per-step device sync)
                pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    return [GradientClipping()]
