"""Lightning's DeepSpeedStrategy, made to run on DeepSpeed's CPU accelerator too, and to resume
universal checkpoints (another world size) with each parameter group's own hyperparameters.

Lightning refuses non-CUDA accelerators in setup_environment and checks that device indices
match local ranks (CPU devices have none); DeepSpeed itself runs ZeRO 1-3 on its CPU
accelerator over gloo. The CPU subclass skips those two checks and gives each CPU device an index.
DeepSpeed is imported lazily: it is slow to import.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl

from trainer.config import StrategyConfig

# Lightning sets this from Trainer(accumulate_grad_batches=...) and refuses it in the config.
_SET_BY_LIGHTNING = ("gradient_accumulation_steps",)
# Restored by Lightning's LR scheduler and by DeepSpeed's own state: not put back after a universal load.
_RESTORED_ELSEWHERE = ("params", "lr", "initial_lr", "step")


def deepspeed_json(s: StrategyConfig, *, micro_batch_size: int, accumulate: int, gradient_clip: float,
                   precision: str) -> dict[str, Any]:
    """The DeepSpeed config generated from the typed strategy fields, with `strategy.deepspeed_config`
    merged on top (the raw escape hatch). Gradient clipping happens inside the engine, from here."""
    zero: dict[str, Any] = {
        "stage": s.zero_stage,
        "overlap_comm": s.overlap_comm,
        "contiguous_gradients": s.contiguous_gradients,
        "reduce_bucket_size": s.reduce_bucket_size,
        "allgather_bucket_size": s.allgather_bucket_size,
    }
    if s.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = s.stage3_prefetch_bucket_size
        zero["stage3_param_persistence_threshold"] = s.stage3_param_persistence_threshold
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if s.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulate,
        "gradient_clipping": gradient_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision.startswith("16")},
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(cfg, dict(s.deepspeed_config))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_deepspeed_strategy(config: dict[str, Any], *, on_gpu: bool, timeout: timedelta, backend: str):
    config = {k: v for k, v in config.items() if k not in _SET_BY_LIGHTNING}
    cls = _strategy_classes()[0 if on_gpu else 1]
    return cls(config=config, timeout=timeout, process_group_backend=backend)


def defer_engine_writes(strategy, deferred, group=None) -> None:
    """checkpoint.async=true: DeepSpeed writes every checkpoint file through its engine's checkpoint
    engine; this one stages each state to host memory and leaves the write for the background."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from trainer.checkpoint.async_writer import HostStager

    stager = HostStager()  # one host copy of each file's state, reused by every save

    class StagingCheckpointEngine(TorchCheckpointEngine):
        def save(self, state_dict, path: str) -> None:
            staged = stager.stage(state_dict, os.path.basename(path))
            deferred.add(lambda: TorchCheckpointEngine.save(self, staged, path))

        def preserves_storage_sharing(self) -> bool:
            return False  # staging copies each tensor into its own storage (DeepSpeed need not clone first)

    engine = strategy.deepspeed_engine
    staging = StagingCheckpointEngine()
    staging.zipfile_serialization = engine.checkpoint_engine.zipfile_serialization
    engine.checkpoint_engine = staging


def _strategy_classes():
    import torch
    from lightning_fabric.utilities.seed import reset_seed
    from pytorch_lightning.strategies import DeepSpeedStrategy
    from pytorch_lightning.strategies.ddp import DDPStrategy

    class TrainerDeepSpeedStrategy(DeepSpeedStrategy):
        def load_checkpoint(self, checkpoint_path, weights_only=None):
            # DeepSpeed's ZeRO-3 universal loader copies param group 0's hyperparameters (weight decay,
            # betas, eps) onto every group; put each group's own (from configure_optimizers) back.
            universal = bool((self.config or {}).get("checkpoint", {}).get("load_universal"))
            base = getattr(self.deepspeed_engine.optimizer, "optimizer", None) if universal else None
            own = [{k: v for k, v in g.items() if k not in _RESTORED_ELSEWHERE} for g in base.param_groups] if base else []
            state = super().load_checkpoint(checkpoint_path, weights_only)
            for group, hyper in zip(base.param_groups if base else [], own):
                group.update(hyper)
            return state

    class CPUDeepSpeedStrategy(TrainerDeepSpeedStrategy):
        def setup_environment(self) -> None:
            # Skip DeepSpeedStrategy's CUDA-only check; the rest of the setup is DDP's.
            DDPStrategy.setup_environment(self)

        def setup_distributed(self) -> None:
            # As DeepSpeedStrategy's, minus the check that device indices equal local ranks.
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", self.local_rank)

    return TrainerDeepSpeedStrategy, CPUDeepSpeedStrategy



class EngineMetrics(pl.Callback):
    """DeepSpeed clips inside its engine's step: the global norm it computed (before clipping) and, under
    fp16, its loss scale are read after each optimizer step and logged with that step's row
    (train/grad_norm, train/loss_scale)."""

    def __init__(self) -> None:
        self._step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:
            return  # inside an accumulation window: no step yet
        self._step = trainer.global_step
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is None:
            return
        norm = engine.get_global_grad_norm()
        if norm is not None:
            pl_module.log("train/grad_norm", float(norm), on_step=True, on_epoch=False)
        if engine.fp16_enabled():
            pl_module.log("train/loss_scale", float(engine.optimizer.loss_scale), on_step=True, on_epoch=False)
