"""One training step of one process, traced on fake tensors: the memory it holds in each phase, by
category, without allocating any.

The net is built under FakeTensorMode and driven through the loop Lightning runs (`accumulate`
micro-batches of forward + backward, the gradients set to None after the first forward of the window
(so the previous step's gradients are still held during that forward), gradient clipping, the
optimizer step; AdamW's per-parameter implementation, as on CPU, close to CUDA's fused one), with
activation checkpointing applied as the strategy plan applies it; torch's MemTracker
(torch.distributed._tools) follows every storage and sorts it into parameters, gradients, optimizer
state, activations and temporaries. A first step creates the optimizer state; the second is measured,
phase by phase (the tracker's peak restarts at each phase). What the trace cannot see (the strategy's
sharding and communication buffers) is added by planning/memory.py.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Usage:
    """Bytes held at a phase's peak, by category."""

    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    temporaries: float = 0.0  # gradients of activations, recomputation, optimizer temporaries, other

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def scaled(self, **factors: float) -> "Usage":
        return Usage(**{f.name: getattr(self, f.name) * factors.get(f.name, 1.0) for f in fields(self)})

    def plus(self, **extra: float) -> "Usage":
        return Usage(**{f.name: getattr(self, f.name) + extra.get(f.name, 0.0) for f in fields(self)})


PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class StepTrace:
    phases: dict[str, Usage]  # forward | backward | optimizer -> usage at that phase's peak
    param_bytes: float  # all parameters, each storage once
    grad_bytes: float  # all gradients after backward
    optimizer_bytes: float  # optimizer state after the step
    n_params: int
    block_param_bytes: float  # the largest repeated block's parameters (a sharding unit)
    root_param_bytes: float  # parameters outside the repeated blocks (embeddings, head, final norm)
    micro_batch: int
    micro_batch_accumulates: bool = False  # more than one micro-batch per optimizer step


def trace_step(make_net: Callable[[], nn.Module], make_batch: Callable[[], Any], *, micro_batch: int,
               accumulate: int = 1, activation_checkpointing: str = "none", precision: str = "32-true",
               lr: float = 1e-3, gradient_clip: float = 1.0) -> StepTrace:
    """Trace two optimizer steps of `make_net()` on `make_batch()` (inputs, targets) and measure the second."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from trainer.distributed.activation_checkpointing import apply_activation_checkpointing, repeated_blocks

    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=False):
        warnings.simplefilter("ignore")
        net = make_net()
        blocks = repeated_blocks(net)
        apply_activation_checkpointing(net, activation_checkpointing)
        params = list(dict.fromkeys(net.parameters()))  # tied weights once
        decay = [p for p in params if p.dim() >= 2]
        optimizer = torch.optim.AdamW([{"params": decay}, {"params": [p for p in params if p.dim() < 2],
                                                           "weight_decay": 0.0}], lr=lr, foreach=False)
        batch = make_batch()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16-mixed"))

        def forward_backward(first: bool) -> None:
            with autocast:
                loss = net(*batch)
            if first:
                optimizer.zero_grad(set_to_none=True)  # Lightning: after the window's first forward
            loss.backward()

        def step() -> None:
            if gradient_clip:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip)
            optimizer.step()

        for i in range(accumulate):
            forward_backward(first=i == 0)
        step()

        tracker = MemTracker()
        tracker.track_external(net, optimizer, batch)
        peaks: dict[str, dict] = {}
        with tracker:
            for i in range(accumulate):
                tracker.reset_mod_stats()  # the tracker refuses a second forward of the same root otherwise
                _restart_peak(tracker)
                with autocast:
                    loss = net(*batch)
                peaks["forward"] = _larger(peaks.get("forward"), tracker.get_tracker_snapshot("peak"))
                if i == 0:
                    optimizer.zero_grad(set_to_none=True)
                _restart_peak(tracker)
                loss.backward()
                del loss
                peaks["backward"] = _larger(peaks.get("backward"), tracker.get_tracker_snapshot("peak"))
            _restart_peak(tracker)
            step()
            peaks["optimizer"] = tracker.get_tracker_snapshot("peak")
        optimizer_bytes = _bytes(t for state in optimizer.state.values() for t in state.values()
                                 if isinstance(t, torch.Tensor))
        phases = {name: _usage(snap, optimizer_bytes) for name, snap in peaks.items()}

        block_bytes = max((_bytes(b.parameters()) for b in blocks), default=0.0)
        all_bytes = _bytes(params)
        return StepTrace(
            phases=phases, param_bytes=all_bytes, grad_bytes=_bytes(p.grad for p in params if p.grad is not None),
            optimizer_bytes=optimizer_bytes, n_params=sum(p.numel() for p in params),
            block_param_bytes=block_bytes, root_param_bytes=all_bytes - sum(_bytes(b.parameters()) for b in blocks),
            micro_batch=micro_batch, micro_batch_accumulates=accumulate > 1,
        )


def _bytes(tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors))


def _restart_peak(tracker) -> None:
    """Start a new phase: the tracker's peak becomes its current usage (as MemTracker.__enter__ does;
    leaving and re-entering the tracker instead would drop its gradient hooks)."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY

    tracker._peak_mem_snap = tracker.get_tracker_snapshot()
    tracker._peak_mem = {dev: snap[_TOTAL_KEY] for dev, snap in tracker._peak_mem_snap.items()}


def _usage(snapshot: dict, optimizer_bytes: float) -> Usage:
    """A tracker snapshot as Usage. The optimizer state is the known size of AdamW's state (the tracker
    also files the step's own temporaries under it); temporaries are whatever else is held."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY
    from torch.distributed._tools.mem_tracker import _MemRefType as R

    total: dict = {}
    for dev_snap in snapshot.values():
        for key, value in dev_snap.items():
            total[key] = total.get(key, 0) + value
    params = total.get(R.PARAM, 0) + total.get(R.BUFFER, 0)
    grads, activations = total.get(R.GRAD, 0), total.get(R.ACT, 0)
    optimizer = min(optimizer_bytes, total.get(R.OPT, 0) + total.get(R.OTH, 0) + total.get(R.TEMP, 0))
    rest = total.get(_TOTAL_KEY, 0) - params - grads - activations - optimizer
    return Usage(params=params, grads=grads, optimizer=optimizer, activations=activations, temporaries=max(0.0, rest))


def _larger(a: dict | None, b: dict) -> dict:
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY

    def total(snap: dict) -> int:
        return sum(dev.get(_TOTAL_KEY, 0) for dev in snap.values())

    return b if a is None or total(b) > total(a) else a


def screening_trace(make_net: Callable[[], nn.Module], batch: Any, *, micro_batch: int) -> StepTrace:
    """A quick upper bound in the trace's form, from one forward on the meta device: every tensor the
    forward produces counted as kept (activations), twice more for backward's temporaries, and the
    whole model state in every phase. No FakeTensorMode, no backward: fast enough to run before every
    launch; the full trace runs only when this bound comes near the device's memory."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from trainer.distributed.activation_checkpointing import repeated_blocks

    class CountOutputs(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.total += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        net = make_net()
        meta_batch = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in batch]
        with torch.no_grad(), CountOutputs() as counter:
            net(*meta_batch)
    params = list(dict.fromkeys(net.parameters()))
    psi = _bytes(params)
    blocks = repeated_blocks(net)
    acts = float(counter.total)
    phase = Usage(params=psi, grads=psi, optimizer=2 * psi, activations=acts, temporaries=2 * acts)
    return StepTrace(phases={p: phase for p in PHASES}, param_bytes=psi, grad_bytes=psi, optimizer_bytes=2 * psi,
                     n_params=sum(p.numel() for p in params),
                     block_param_bytes=max((_bytes(b.parameters()) for b in blocks), default=0.0),
                     root_param_bytes=psi - sum(_bytes(b.parameters()) for b in blocks), micro_batch=micro_batch)
