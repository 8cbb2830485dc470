"""Activation checkpointing per transformer block, applied from outside the model.

Each module held in the net's ModuleLists (a GPT's blocks) is wrapped in torch's CheckpointWrapper
(non-reentrant `torch.utils.checkpoint`), before any strategy shards or wraps the net:

- full: a block keeps only its input; backward runs its forward again (one extra forward per step).
- selective: a block keeps the outputs of its matmuls and of attention (the expensive ops) and
  recomputes the cheap memory-heavy ones (norms, rotary embeddings, SwiGLU, residual adds), as
  torchtitan's op-level selective checkpointing does.

The wrapper's state-dict hooks remove its `_checkpoint_wrapped_module.` prefix, so checkpoints are the
same with and without it (a run may change the mode on resume).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

MODES = ("none", "full", "selective")


def repeated_blocks(net: nn.Module) -> list[nn.Module]:
    """The modules held in the net's ModuleLists: a transformer's blocks (the unit of sharding and checkpointing)."""
    return [m for ml in net.modules() if isinstance(ml, nn.ModuleList) for m in ml]


def apply_activation_checkpointing(net: nn.Module, mode: str) -> int:
    """Wrap every repeated block of `net` in place; returns how many were wrapped (0 for mode=none)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    if mode == "none":
        return 0
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode {mode!r} is not one of {MODES}")
    kwargs = {"context_fn": _selective_context} if mode == "selective" else {}
    wrapped = 0
    for ml in [m for m in net.modules() if isinstance(m, nn.ModuleList)]:
        for i, block in enumerate(ml):
            ml[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, **kwargs)
            wrapped += 1
    return wrapped


@functools.lru_cache(maxsize=1)
def saved_ops() -> frozenset:
    """The ops selective checkpointing keeps the outputs of: matmuls and attention."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_policy)
