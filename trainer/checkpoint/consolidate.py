"""Consolidate sharded checkpoints (DeepSpeed ZeRO, FSDP, FSDP2) into one full state dict on CPU, in one process."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.errors import UserError


def consolidate_sharded(state_dir: Path, manifest: dict) -> dict[str, torch.Tensor]:
    strategy = manifest.get("strategy")
    if strategy == "deepspeed":
        return _deepspeed_fp32(state_dir)
    if strategy == "fsdp":
        return _dcp_weights(state_dir, "model")  # Lightning's FSDPStrategy saves the weights under "model"
    if strategy == "fsdp2":
        return _dcp_weights(state_dir, "state_dict")  # ModelParallelStrategy, under "state_dict"
    raise UserError(f"cannot consolidate a sharded checkpoint written by strategy {strategy!r} at {state_dir}")


def _deepspeed_fp32(state_dir: Path) -> dict[str, torch.Tensor]:
    """ZeRO 1-3: DeepSpeed's own zero_to_fp32 merges every rank's fp32 partitions (tied weights included)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tags = sorted(p.name for p in state_dir.iterdir() if p.is_dir())
    if not tags:
        raise UserError(f"{state_dir} holds no DeepSpeed checkpoint tag directory")
    state = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=tags[-1])
    return {k: v for k, v in state.items()}


def _dcp_weights(state_dir: Path, key: str) -> dict[str, torch.Tensor]:
    """The weights of a torch.distributed.checkpoint directory: read every shard without a process group."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    full: dict = {}
    _load_state_dict(full, storage_reader=FileSystemReader(state_dir), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    if key not in full:
        raise UserError(f"{state_dir} is a distributed checkpoint without model weights (keys: {sorted(full)[:5]})")
    return dict(full[key])
