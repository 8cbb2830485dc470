"""Build the Lightning strategy for `strategy.name`, from typed arguments."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from trainer.errors import UserError


def build_strategy(
    name: str,
    *,
    on_gpu: bool,
    timeout_s: int,
    zero_stage: int = 0,
    deepspeed_json: dict[str, Any] | None = None,
    fsdp_sharding: str = "FULL_SHARD",
    fsdp_state_dict: str = "sharded",
    fsdp_wrap_types: set[type] | None = None,
):
    if name == "single":
        return "auto"
    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if on_gpu else "gloo"
    if name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=backend, timeout=timeout, find_unused_parameters=False)
    if name == "fsdp":
        from trainer.distributed.fsdp import make_fsdp_strategy

        return make_fsdp_strategy(
            on_gpu=on_gpu,
            sharding_strategy=fsdp_sharding,
            state_dict_type=fsdp_state_dict,
            process_group_backend=backend,
            timeout=timeout,
            wrap_types=fsdp_wrap_types,
        )
    if name == "deepspeed":
        from trainer.distributed.deepspeed import make_deepspeed_strategy

        return make_deepspeed_strategy(deepspeed_json or {}, on_gpu=on_gpu, timeout=timeout, backend=backend)
    raise UserError(f"unknown strategy {name!r}")


def deepspeed_json(
    *,
    zero_stage: int,
    micro_batch_size: int,
    accumulate: int,
    gradient_clip: float,
    precision: str,
    offload_optimizer: bool,
    offload_params: bool,
    overlap_comm: bool,
    contiguous_gradients: bool,
    reduce_bucket_size: int,
    allgather_bucket_size: int,
    stage3_prefetch_bucket_size: int,
    stage3_param_persistence_threshold: int,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The DeepSpeed config generated from typed fields, with the raw mapping merged on top."""
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": contiguous_gradients,
        "reduce_bucket_size": reduce_bucket_size,
        "allgather_bucket_size": allgather_bucket_size,
    }
    if zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = stage3_prefetch_bucket_size
        zero["stage3_param_persistence_threshold"] = stage3_param_persistence_threshold
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
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
    return _deep_merge(cfg, overrides)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_deepspeed_json(cfg: dict[str, Any], run_dir: Path) -> Path:
    path = run_dir / "deepspeed_config.json"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return path
