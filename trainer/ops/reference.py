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


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """The definition: cross_entropy(hidden @ weight.T, targets). hidden (N, D), weight (V, D).

    Holds all (N, V) logits (and their fp32 copy and gradient): what the tests compare the chunked
    implementations with, never what a run calls."""
    return cross_entropy(hidden @ weight.t(), targets, ignore_index=ignore_index, z_loss=z_loss)


# The reference linear cross-entropy's chunk: at most this many bytes of fp32 logits ...
CHUNK_FP32_LOGITS_BYTES = 256 * 2**20
# ... and at most 1/8 of all the logits, but no fewer than this many rows (tiny inputs: one chunk).
MIN_CHUNK_ROWS = 256


def linear_cross_entropy_chunk_rows(n: int, vocab: int, requested: int = 0) -> int:
    """Rows per chunk: `requested` if > 0; else 1/8 of the rows (at least MIN_CHUNK_ROWS), capped
    so that a chunk's fp32 logits take at most CHUNK_FP32_LOGITS_BYTES."""
    if requested > 0:
        return max(1, min(requested, n))
    cap = max(1, CHUNK_FP32_LOGITS_BYTES // (4 * max(1, vocab)))
    return max(1, min(cap, max(-(-n // 8), min(n, MIN_CHUNK_ROWS))))


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    chunk_rows: int = 0,
) -> torch.Tensor:
    """linear_cross_entropy, chunk by chunk: the memory contract of the fused op in pure PyTorch.

    Only one chunk of logits exists at a time (see linear_cross_entropy_chunk_rows). As the CUDA
    kernel does, the forward computes the loss and both gradients chunk by chunk (each chunk's
    logits are turned into their gradient in place and folded into d(hidden) and an fp32 d(weight)
    at once); the backward only scales them. Under autocast, hidden and weight are cast as the
    matmul would be (autocast does not reach inside an autograd.Function's forward). torch.compile
    traces it (the chunk loop unrolls; tests/ops/test_linear_ce_reference.py checks fullgraph).
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    rows = linear_cross_entropy_chunk_rows(hidden.shape[0], weight.shape[0], chunk_rows)
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, z_loss, rows)
        return _chunked_loss_and_grads(hidden, weight, targets, ignore_index, z_loss, rows, False)[0]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, z_loss, rows):
        loss, grad_hidden, grad_weight = _chunked_loss_and_grads(hidden, weight, targets, ignore_index, z_loss, rows, True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        return (grad_hidden * grad_loss.to(grad_hidden.dtype) if need_h else None,
                grad_weight * grad_loss.to(grad_weight.dtype) if need_w else None,
                None, None, None, None)


def _chunked_loss_and_grads(hidden, weight, targets, ignore_index: int, z_loss: float, rows: int, with_grads: bool):
    """(loss, d loss/d hidden, d loss/d weight) with at most `rows` rows of logits alive; no grads
    (None) unless with_grads. The loss and the softmax are computed in fp32 (float64 for float64),
    the matrix products in the inputs' dtype; d(weight) is summed over the chunks in fp32."""
    n = hidden.shape[0]
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    valid_all = targets != ignore_index
    inv_valid = 1.0 / valid_all.sum().clamp(min=1).to(acc)
    loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if with_grads else None
    for start in range(0, n, rows):
        h, t, valid = hidden[start : start + rows], targets[start : start + rows], valid_all[start : start + rows]
        logits = (h @ weight.t()).to(acc)  # (rows, V): the only logits alive
        safe_t = torch.where(valid, t, torch.zeros_like(t))
        target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
        # logsumexp, in place over the logits (torch.logsumexp would hold a second (rows, V) buffer)
        row_max = logits.amax(dim=-1)
        exp = logits.sub_(row_max[:, None]).exp_()  # exp(logit - max), (rows, V)
        sum_exp = exp.sum(dim=-1)
        lse = row_max + sum_exp.log()
        row_loss = lse - target_logit
        if z_loss:
            row_loss = row_loss + z_loss * lse.pow(2)
        loss_sum = loss_sum + (row_loss * valid).sum()
        if with_grads:
            # d loss/d logits = (softmax * (1 + 2 z lse) - onehot(target)) * valid / n_valid, in place.
            scale = valid.to(acc) * inv_valid
            grad = exp.mul_((scale * (1 + 2 * z_loss * lse) / sum_exp)[:, None])
            grad.scatter_add_(1, safe_t[:, None], -scale[:, None])
            g = grad.to(hidden.dtype)
            del grad
            grad_hidden[start : start + rows] = g @ weight
            grad_weight.add_((g.t() @ h).to(acc))
            del g
        del logits, exp  # before the next chunk's logits exist
    loss = loss_sum * inv_valid
    if with_grads:
        return loss, grad_hidden, grad_weight.to(weight.dtype)
    return loss, None, None
