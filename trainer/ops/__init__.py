"""The model's hot-path ops, dispatched between the PyTorch reference and fused kernels.

`set_kernel_mode("auto" | "fused" | "reference")` picks the implementation for the
whole process; the model only ever calls the functions below.
"""
from __future__ import annotations

from trainer.ops import reference

_MODE = "reference"


def set_kernel_mode(mode: str) -> str:
    """Select the implementation; returns the mode actually in effect."""
    global _MODE
    if mode not in ("auto", "fused", "reference"):
        raise ValueError(f"kernels must be auto, fused or reference, got {mode!r}")
    _MODE = "reference" if mode == "auto" else mode
    return _MODE


def kernel_mode() -> str:
    return _MODE


def rms_norm(x, weight, eps: float = 1e-6):
    return reference.rms_norm(x, weight, eps)


def apply_rotary(q, k, cos, sin):
    return reference.apply_rotary(q, k, cos, sin)


def swiglu(a, b):
    return reference.swiglu(a, b)


def cross_entropy(logits, targets, ignore_index: int = -100, z_loss: float = 0.0):
    return reference.cross_entropy(logits, targets, ignore_index, z_loss)


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index: int = -100, z_loss: float = 0.0):
    return reference.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, z_loss)
