"""The model's hot-path ops, dispatched between the PyTorch reference and fused kernels.

`set_kernel_mode("auto" | "fused" | "reference", compiled=...)` picks, op by op, the
implementation for the whole process; the model only ever calls the functions below.

- reference: the pure-PyTorch functions in trainer.ops.reference, everywhere.
- fused: the trainer_kernels extension (csrc/) for every op and tensor: CUDA kernels for CUDA
  tensors, the C++ CPU paths for CPU tensors. A machine that cannot build it is a UserError.
- auto: per op, the CUDA kernel where trainer/ops/auto_table.json shows it measured faster than
  the reference on this GPU model (or one of the same capability) in the same compile setting
  (trainer.compile); the reference everywhere else, on CPU, and where the kernels do not build
  (reported once, the run continues). auto decides before building: where it picks no kernel,
  the extension is not built. See trainer.ops.auto.

kernel_status() says what runs where and why, op by op (the run manifest records it).
"""
from __future__ import annotations

import logging

import torch

from trainer.errors import UserError
from trainer.ops import fused, reference

log = logging.getLogger(__name__)

MODES = ("auto", "fused", "reference")
# The ops below, by name: kernel_status() and the auto table (trainer/ops/auto_table.json) use these.
OPS = ("rms_norm", "apply_rotary", "swiglu", "cross_entropy", "fused_linear_cross_entropy")

_NONE: frozenset[str] = frozenset()
_ROUTES: dict[str, frozenset[str]] = {op: _NONE for op in OPS}  # op -> device types given the fused kernel
_STATUS: dict = {}
_WARNED = False  # the fallback to the reference is reported once per process


def set_kernel_mode(mode: str, cache_dir: str | None = None, compiled: bool = False) -> str:
    """Select the implementations; returns the mode in effect: "fused" (every op fused on some
    device), "reference" (no op fused), or "mixed" (auto chose per op).

    cache_dir (paths.cache_dir) is where a JIT build goes, under kernels/; by default
    $TRAINER_CACHE or ~/.cache/trainer. Building happens here, once per process. compiled:
    whether the model runs under torch.compile (trainer.compile), which auto's choice depends on.
    auto builds only when the table picks a kernel for some op.
    """
    global _WARNED
    if mode not in MODES:
        raise UserError(f"kernels={mode!r} is not a kernel mode: use kernels=auto, kernels=fused or kernels=reference")
    base = {"requested": mode, "compiled": compiled}
    if mode == "reference":
        return _set(base, {}, {op: "kernels=reference" for op in OPS}, "kernels=reference")
    cuda = torch.cuda.is_available()
    if mode == "auto" and not cuda:
        why = "no CUDA device: auto uses the PyTorch reference on CPU"
        return _set(base, {}, {op: why for op in OPS}, why)

    routes = why = None
    if mode == "auto":
        # Decide before building: on a GPU with no table entry, or whose measured kernels all lost
        # or changed since, nothing uses the extension, and its first JIT build takes minutes.
        routes, why, base["auto_table"] = _auto_routes(compiled)
        if not any(routes.values()):
            return _set(base, {}, why, "auto chose the PyTorch reference for every op on this GPU (no build)")

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
        why = f"build failed: {e}"
        return _set(base, {}, {op: why for op in OPS}, why)
    fused.register()
    base["extension"] = info.as_dict()
    if mode == "fused":
        routes = {op: frozenset({"cuda", "cpu"}) for op in OPS}
        return _set(base, routes, {op: "kernels=fused" for op in OPS}, None)
    return _set(base, routes, why, None)


def _auto_routes(compiled: bool) -> tuple[dict[str, frozenset[str]], dict[str, str], dict]:
    """auto's per-op choice for the current CUDA device, from the measured table."""
    from trainer.ops import auto

    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    capability = f"{major}.{minor}"
    entry, match = auto.find_entry(auto.load_table(), name, capability)
    picks = auto.choose(entry, match, compiled, name)
    routes = {op: frozenset({"cuda"}) if c.impl == "fused" else _NONE for op, c in picks.items()}
    table = {"device": name, "capability": capability, "match": match,
             "measured_on": entry["device"]["name"] if entry else None,
             "provenance": entry.get("provenance") if entry else None}
    return routes, {op: c.why for op, c in picks.items()}, table


def _set(base: dict, routes: dict[str, frozenset[str]], why: dict[str, str], reason: str | None) -> str:
    global _ROUTES, _STATUS
    _ROUTES = {op: routes.get(op, _NONE) for op in OPS}
    fused_anywhere = [op for op in OPS if _ROUTES[op]]
    effective = "reference" if not fused_anywhere else "fused" if len(fused_anywhere) == len(OPS) else "mixed"
    _STATUS = {
        **base,
        "effective": effective,
        "fused_devices": sorted(set().union(*_ROUTES.values())),
        "reason": reason,
        # What each op runs on each device, and why. Two exceptions inside a fused route, by
        # shape: rms_norm rows wider than fused.RMS_NORM_CUDA_MAX_COLS and rotary with q, k of
        # different dtypes take the reference.
        "ops": {op: {"cuda": "fused" if "cuda" in _ROUTES[op] else "reference",
                     "cpu": "fused" if "cpu" in _ROUTES[op] else "reference",
                     "why": why.get(op)} for op in OPS},
    }
    _STATUS.setdefault("extension", None)
    return effective


def kernel_mode() -> str:
    return _STATUS.get("effective", "reference")


def kernel_status() -> dict:
    """What runs where and why, op by op, for the run manifest and the console."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _STATUS.items()}


def _fused(op: str, t: torch.Tensor) -> bool:
    return t.device.type in _ROUTES[op]


def rms_norm(x, weight, eps: float = 1e-6):
    if _fused("rms_norm", x):
        return fused.rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def apply_rotary(q, k, cos, sin):
    if _fused("apply_rotary", q) and q.dtype == k.dtype:
        return fused.apply_rotary(q, k, cos, sin)
    return reference.apply_rotary(q, k, cos, sin)


def swiglu(a, b):
    if _fused("swiglu", a):
        return fused.swiglu(a, b)
    return reference.swiglu(a, b)


def cross_entropy(logits, targets, ignore_index: int = -100, z_loss: float = 0.0):
    if _fused("cross_entropy", logits):
        return fused.cross_entropy(logits, targets, ignore_index, z_loss)
    return reference.cross_entropy(logits, targets, ignore_index, z_loss)


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index: int = -100, z_loss: float = 0.0):
    if _fused("fused_linear_cross_entropy", hidden):
        return fused.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, z_loss)
    return reference.fused_linear_cross_entropy(hidden, weight, targets, ignore_index, z_loss)


_set({"requested": "reference", "compiled": False}, {}, {op: "kernels=reference" for op in OPS}, None)
