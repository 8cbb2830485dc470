"""The fused path: torch.library registrations for the trainer_kernels ops, and wrappers.

The C++ side (csrc/) defines each op's schema and its CPU and CUDA kernels. Here each op
gets a fake implementation (shapes and dtypes only, so torch.compile can trace through it)
and an autograd formula whose backward calls the matching backward op. Call `register()`
once after the library is loaded (trainer.ops.build.load); the wrappers below then behave
like the functions in trainer.ops.reference.
"""
from __future__ import annotations

import torch

_registered = False


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---- fake implementations (shape and dtype propagation) ---------------------------------


def _rms_norm_fwd_fake(x, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=_acc_dtype(x))


def _rms_norm_bwd_fake(grad_y, x, weight, rstd):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _rotary_fake(q, k, cos, sin, inverse=False):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _swiglu_fwd_fake(a, b):
    return a.new_empty(a.shape)


def _swiglu_bwd_fake(grad, a, b):
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _cross_entropy_fwd_fake(logits, targets, ignore_index, z_loss):
    n = logits.shape[0]
    # loss per row, and the softmax statistics (row max, sum of exp(logit - max)).
    return logits.new_empty((n,), dtype=_acc_dtype(logits)), logits.new_empty((n, 2), dtype=_acc_dtype(logits))


def _cross_entropy_bwd_fake(grad_loss, logits, targets, stats, ignore_index, z_loss):
    return logits.new_empty(logits.shape)


def _fused_linear_cross_entropy_fwd_fake(hidden, weight, targets, ignore_index, z_loss, compute_grad, chunk_rows=0):
    n, d = hidden.shape
    v = weight.shape[0]
    return (
        hidden.new_empty((), dtype=_acc_dtype(hidden)),
        hidden.new_empty((n if compute_grad else 0, d)),
        weight.new_empty((v if compute_grad else 0, d)),
    )


# ---- autograd -----------------------------------------------------------------------------


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _eps = inputs
    _y, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(x, weight, rstd)


def _rms_norm_backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_w = torch.ops.trainer_kernels.rms_norm_bwd(grad_y.contiguous(), x, weight, rstd)
    return grad_x, grad_w, None


def _rotary_setup(ctx, inputs, output):
    q, k, cos, sin, inverse = inputs
    ctx.save_for_backward(cos, sin)
    ctx.inverse = inverse
    ctx.q_meta = (q.shape, q.dtype)
    ctx.k_meta = (k.shape, k.dtype)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _rotary_backward(ctx, grad_q, grad_k):
    cos, sin = ctx.saved_tensors
    if grad_q is None:
        grad_q = torch.zeros(ctx.q_meta[0], dtype=ctx.q_meta[1], device=cos.device)
    if grad_k is None:
        grad_k = torch.zeros(ctx.k_meta[0], dtype=ctx.k_meta[1], device=cos.device)
    # The rotation is orthogonal: its gradient is the rotation by the opposite angle.
    gq, gk = torch.ops.trainer_kernels.rotary(
        _unit_last_stride(grad_q), _unit_last_stride(grad_k), cos, sin, not ctx.inverse
    )
    return gq, gk, None, None, None


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, grad):
    a, b = ctx.saved_tensors
    return torch.ops.trainer_kernels.swiglu_bwd(grad.contiguous(), a, b)


def _cross_entropy_setup(ctx, inputs, output):
    logits, targets, ignore_index, z_loss = inputs
    _loss, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(logits, targets, stats)
    ctx.ignore_index, ctx.z_loss = ignore_index, z_loss


def _cross_entropy_backward(ctx, grad_loss, _grad_stats):
    logits, targets, stats = ctx.saved_tensors
    grad = torch.ops.trainer_kernels.cross_entropy_bwd(
        grad_loss.contiguous(), logits, targets, stats, ctx.ignore_index, ctx.z_loss
    )
    return grad, None, None, None


def _fused_lce_setup(ctx, inputs, output):
    _loss, grad_hidden, grad_weight = output
    ctx.mark_non_differentiable(grad_hidden, grad_weight)
    ctx.save_for_backward(grad_hidden, grad_weight)


def _fused_lce_backward(ctx, grad_loss, _gh, _gw):
    # The forward already computed d(loss)/d(hidden) and d(loss)/d(weight); scale them.
    grad_hidden, grad_weight = ctx.saved_tensors
    if grad_hidden.numel() == 0 and grad_weight.numel() == 0:
        raise RuntimeError("fused_linear_cross_entropy ran without gradients (compute_grad=False)")
    return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype),
            None, None, None, None, None)


def register() -> None:
    """Attach fake implementations and autograd formulas to the loaded C++ ops (once)."""
    global _registered
    if _registered:
        return
    lib = "trainer_kernels::"
    fakes = {
        "rms_norm_fwd": _rms_norm_fwd_fake,
        "rms_norm_bwd": _rms_norm_bwd_fake,
        "rotary": _rotary_fake,
        "swiglu_fwd": _swiglu_fwd_fake,
        "swiglu_bwd": _swiglu_bwd_fake,
        "cross_entropy_fwd": _cross_entropy_fwd_fake,
        "cross_entropy_bwd": _cross_entropy_bwd_fake,
        "fused_linear_cross_entropy_fwd": _fused_linear_cross_entropy_fwd_fake,
    }
    for name, fake in fakes.items():
        torch.library.register_fake(lib + name)(fake)
    autograd = {
        "rms_norm_fwd": (_rms_norm_backward, _rms_norm_setup),
        "rotary": (_rotary_backward, _rotary_setup),
        "swiglu_fwd": (_swiglu_backward, _swiglu_setup),
        "cross_entropy_fwd": (_cross_entropy_backward, _cross_entropy_setup),
        "fused_linear_cross_entropy_fwd": (_fused_lce_backward, _fused_lce_setup),
    }
    for name, (backward, setup) in autograd.items():
        torch.library.register_autograd(lib + name, backward, setup_context=setup)
    _registered = True


# ---- wrappers with the reference signatures ---------------------------------------------


# The CUDA backward keeps each block's weight-gradient slice in registers: up to this hidden
# size (rms_norm_bwd_max_cols in csrc/rms_norm). Wider rows take the reference path.
RMS_NORM_CUDA_MAX_COLS = 16384


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    if x.is_cuda and x.shape[-1] > RMS_NORM_CUDA_MAX_COLS:
        from trainer.ops import reference

        return reference.rms_norm(x, weight, eps)
    if weight.dtype not in (x.dtype, torch.float32):
        weight = weight.float()
    y, _rstd = torch.ops.trainer_kernels.rms_norm_fwd(x.contiguous(), weight.contiguous(), eps)
    return y


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    q_out, k_out = torch.ops.trainer_kernels.rotary(
        _unit_last_stride(q), _unit_last_stride(k), cos.float().contiguous(), sin.float().contiguous(), False
    )
    return q_out, k_out


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.trainer_kernels.swiglu_fwd(a.contiguous(), b.to(a.dtype).contiguous())


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, z_loss: float = 0.0
) -> torch.Tensor:
    targets = targets.long().contiguous()
    loss_rows, _stats = torch.ops.trainer_kernels.cross_entropy_fwd(
        logits.contiguous(), targets, int(ignore_index), float(z_loss)
    )
    n_valid = (targets != ignore_index).sum().clamp(min=1)
    return loss_rows.sum() / n_valid


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    chunk_rows: int = 0,
) -> torch.Tensor:
    """chunk_rows: tokens per chunk; 0 lets the kernel choose (about 1 GiB of logits at a time)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast does not reach inside a custom op: cast as it would cast the matmul.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, _gh, _gw = torch.ops.trainer_kernels.fused_linear_cross_entropy_fwd(
        hidden.contiguous(), weight.contiguous(), targets.long().contiguous(), int(ignore_index), float(z_loss),
        compute_grad, int(chunk_rows),
    )
    return loss
