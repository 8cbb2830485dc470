"""The model's hot-path ops, dispatched between the PyTorch reference and fused kernels.

`set_kernel_mode("auto" | "fused" | "reference")` picks the implementation for the
whole process; the model only ever calls the functions below.

- reference: the pure-PyTorch functions in trainer.ops.reference, everywhere.
- fused: the trainer_kernels extension (csrc/) for every tensor: CUDA kernels for CUDA
  tensors, the C++ CPU paths for CPU tensors. A machine that cannot build it is a UserError.
- auto: the CUDA kernels for CUDA tensors when they build here, else (and on CPU) the
  reference; a failed build is reported once and the run continues.
"""
from __future__ import annotations

import logging

import torch

from trainer.errors import UserError
from trainer.ops import fused, reference

log = logging.getLogger(__name__)

MODES = ("auto", "fused", "reference")

_MODE = "reference"  # the mode in effect
_FUSED_DEVICES: frozenset[str] = frozenset()  # device types routed to the extension
_STATUS: dict = {"requested": "reference", "effective": "reference", "fused_devices": [], "reason": None}
_WARNED = False  # the fallback to the reference is reported once per process


def set_kernel_mode(mode: str, cache_dir: str | None = None) -> str:
    """Select the implementation; returns the mode actually in effect ("fused" or "reference").

    cache_dir (paths.cache_dir) is where a JIT build goes, under kernels/; by default
    $TRAINER_CACHE or ~/.cache/trainer. Building happens here, once per process.
    """
    global _WARNED
    if mode not in MODES:
        raise UserError(f"kernels={mode!r} is not a kernel mode: use kernels=auto, kernels=fused or kernels=reference")
    if mode == "reference":
        return _set("reference", "reference", frozenset(), "kernels=reference")
    cuda = torch.cuda.is_available()
    if mode == "auto" and not cuda:
        return _set("auto", "reference", frozenset(), "no CUDA device: auto uses the PyTorch reference on CPU")

    from trainer.ops import build

    try:
        info = build.load(with_cuda=cuda, cache_dir=cache_dir)
    except build.KernelBuildError as e:
        if mode == "fused":
            raise UserError(
                f"kernels=fused, but the custom kernels cannot be built on this machine: {e}. "
                "Fix that, or use kernels=auto (falls back to the PyTorch reference) or kernels=reference."
            ) from e
        if not _WARNED:
            log.warning("custom kernels unavailable (%s); continuing on the PyTorch reference path", e)
            _WARNED = True
        return _set("auto", "reference", frozenset(), f"build failed: {e}")
    fused.register()
    devices = frozenset({"cuda", "cpu"}) if mode == "fused" else frozenset({"cuda"})
    result = _set(mode, "fused", devices, None, info.as_dict())
    log.info("custom kernels loaded (%s, %s) for %s tensors", info.origin, info.path, "/".join(sorted(devices)))
    return result


def _set(requested: str, effective: str, devices: frozenset[str], reason: str | None, extension: dict | None = None) -> str:
    global _MODE, _FUSED_DEVICES, _STATUS
    _MODE, _FUSED_DEVICES = effective, devices
    _STATUS = {
        "requested": requested,
        "effective": effective,
        "fused_devices": sorted(devices),
        "reason": reason,
        "extension": extension,
    }
    return effective


def kernel_mode() -> str:
    return _MODE


def kernel_status() -> dict:
    """What runs where and why, for the run manifest and the console."""
    return dict(_STATUS)


def _fused(t: torch.Tensor) -> bool:
    return t.device.type in _FUSED_DEVICES


def rms_norm(x, weight, eps: float = 1e-6):
    if _fused(x):
        return fused.rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def apply_rotary(q, k, cos, sin):
    if _fused(q) and q.dtype == k.dtype:
        return fused.apply_rotary(q, k, cos, sin)
    return reference.apply_rotary(q, k, cos, sin)


def swiglu(a, b):
    if _fused(a):
        return fused.swiglu(a, b)
    return reference.swiglu(a, b)


def cross_entropy(logits, targets, ignore_index: int = -100, z_loss: float = 0.0):
    if _fused(logits):
        return fused.cross_entropy(logits, targets, ignore_index, z_loss)
    return reference.cross_entropy(logits, targets, ignore_index, z_loss)


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index: int = -100, z_loss: float = 0.0):
    if _fused(hidden):
        return fused.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, z_loss)
    return reference.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, z_loss)
