"""Consolidate sharded checkpoints (DeepSpeed ZeRO, FSDP) into one full state dict on CPU."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.errors import UserError


def consolidate_sharded(state_dir: Path, manifest: dict) -> dict[str, torch.Tensor]:
    strategy = manifest.get("strategy")
    if strategy == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tags = [p.name for p in state_dir.iterdir() if p.is_dir()]
        if not tags:
            raise UserError(f"{state_dir} holds no DeepSpeed checkpoint tag directory")
        state = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=sorted(tags)[-1])
        return {k: v for k, v in state.items()}
    raise UserError(f"cannot consolidate a sharded checkpoint written by strategy {strategy!r} at {state_dir}")
