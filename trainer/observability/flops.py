"""Model FLOPs, for MFU: the architecture's own count when it has one, else counted once.

Counting uses torch.utils.flop_counter.FlopCounterMode on one forward pass in no-grad mode
and takes training as 3x forward (backward is two matmuls per forward matmul). Attention is
counted through the math SDPA backend, which the counter understands on every device.
"""
from __future__ import annotations

from typing import Any, Optional

import torch


def count_forward_flops(fn: Any, *args: Any) -> int:
    """FLOPs of one call of fn(*args), no autograd."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn(*args)
    return counter.get_total_flops()


def count_train_flops(fn: Any, *args: Any) -> int:
    """FLOPs of one forward + backward of a scalar-valued fn(*args) (for checking the 6N rule)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn(*args).backward()
    return counter.get_total_flops()


def measure_train_flops_per_sample(module: torch.nn.Module, inputs: torch.Tensor) -> tuple[Optional[float], str]:
    """3x the counted forward FLOPs per sample, or (None, reason)."""
    was_training = module.training
    try:
        module.eval()  # dropout off; no state (batch-norm statistics) changes
        flops = count_forward_flops(module, inputs)
    except Exception as e:  # sharded parameters (ZeRO-3/FSDP), exotic inputs: skip MFU, say why
        return None, f"could not count the model's FLOPs ({type(e).__name__}: {e})"
    finally:
        module.train(was_training)
    if flops <= 0:
        return None, "the FLOP counter found no matmuls in the model"
    return 3.0 * flops / max(1, inputs.shape[0]), "3x forward FLOPs counted by FlopCounterMode"


def mfu(flops_per_sample: Optional[float], samples_per_s: Optional[float], peak_flops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation of ONE device: achieved model FLOP/s over its dense peak."""
    if not flops_per_sample or not samples_per_s or not peak_flops:
        return None
    return flops_per_sample * samples_per_s / peak_flops
