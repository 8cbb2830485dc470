"""Pure-PyTorch references for every op in trainer.ops.

These define the semantics the fused kernels must match, and they are the path every
machine can take. Each one computes in fp32 (float64 inputs stay float64, so the same code
serves as the high-precision reference in tests) and returns the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.Tensor:
    """x in the accumulation dtype: float32, or float64 for float64 inputs."""
    return x if x.dtype == torch.float64 else x.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = x / sqrt(mean(x^2, -1) + eps) * weight, over the last dim."""
    xf = _acc(x)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(xf.dtype)).to(x.dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate-half RoPE (Llama convention) on q (B, nh, T, hs) and k (B, nkv, T, hs).

    cos, sin: (T, hs/2) fp32. With x1 = x[..., :hs/2], x2 = x[..., hs/2:]:
    out = cat(x1*cos - x2*sin, x2*cos + x1*sin).
    """
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    xf = _acc(x)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b."""
    return (F.silu(_acc(a)) * _acc(b)).to(a.dtype)


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, z_loss: float = 0.0
) -> torch.Tensor:
    """Mean token cross-entropy over targets != ignore_index, plus z_loss * mean(lse^2).

    logits (N, V), targets (N,). Returns an fp32 scalar (float64 for float64 logits).
    """
    logits = _acc(logits)
    valid = targets != ignore_index
    n_valid = valid.sum().clamp(min=1)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum") / n_valid
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        loss = loss + z_loss * (lse.pow(2) * valid).sum() / n_valid
    return loss


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets). hidden (N, D), weight (V, D)."""
    return cross_entropy(hidden @ weight.t(), targets, ignore_index=ignore_index, z_loss=z_loss)
