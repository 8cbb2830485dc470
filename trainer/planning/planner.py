"""The plan of one configuration (memory per device, step time, fits or not) and the search for the
cheapest configuration that fits: every strategy for the world size, activation checkpointing
none/selective/full, and smaller micro-batches with more accumulation (the same global batch).

A trace (planning/trace.py) is taken once per activation-checkpointing mode at the configured
micro-batch; a smaller micro-batch scales the activations and the forward/backward temporaries in
proportion (they are per-sample tensors).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch.nn as nn

from trainer.planning.memory import Layout, MemoryPlan, plan_memory
from trainer.planning.time import TimeEstimate, estimate_time
from trainer.planning.trace import StepTrace, Usage, trace_step

AC_MODES = ("none", "selective", "full")
RECOMPUTE = {"none": 1.0, "selective": 1.05, "full": 4 / 3}  # step FLOPs relative to no checkpointing


@dataclass(frozen=True)
class Workload:
    """What one rank trains: the net, a batch, and the loop around it."""

    make_net: Callable[[], nn.Module]
    make_batch: Callable[[int], Any]  # micro-batch size -> (inputs, targets)
    micro_batch: int
    accumulate: int
    tokens_per_sample: int  # 1 when samples are not sequences
    flops_per_token: Optional[float]  # None: 6 x parameters
    precision: str
    gradient_clip: float
    activation_checkpointing: str


@dataclass(frozen=True)
class Hardware:
    device_name: str
    memory_bytes: Optional[float]  # per device; None: unknown (nothing is checked)
    peak_flops: Optional[float]  # dense, for the compute dtype; None: unknown (no time estimate)
    bandwidth_gbps: float  # between the ranks of a collective
    mfu: float  # fraction of the peak a step reaches
    on_gpu: bool = True  # False: the "device" is host memory, which offloaded state also occupies


@dataclass(frozen=True)
class Plan:
    layout: Layout
    workload: Workload
    trace: StepTrace
    memory: MemoryPlan
    time: TimeEstimate
    hardware: Hardware

    @property
    def peak_bytes(self) -> float:
        """Peak bytes per device; on a CPU run offloaded state is in the same memory and counts too."""
        return self.memory.device_bytes + (0.0 if self.hardware.on_gpu else self.memory.host)

    @property
    def fits(self) -> Optional[bool]:
        return None if self.hardware.memory_bytes is None else self.peak_bytes <= self.hardware.memory_bytes

    def overrides(self) -> list[str]:
        """The command-line overrides that select this configuration."""
        lay, w = self.layout, self.workload
        strategy = {"deepspeed": f"deepspeed_zero{lay.zero_stage}" + ("_offload" if lay.offload_optimizer else "")}
        out = [f"strategy={strategy.get(lay.strategy, lay.strategy)}", f"trainer.activation_checkpointing={w.activation_checkpointing}"]
        out += [f"data.batch_size={w.micro_batch}", f"trainer.accumulate_grad_batches={w.accumulate}"]
        return out


class Planner:
    def __init__(self, workload: Workload, hardware: Hardware):
        self.workload, self.hardware = workload, hardware
        self._traces: dict[str, StepTrace] = {}

    def trace(self, activation_checkpointing: str) -> StepTrace:
        if activation_checkpointing not in self._traces:
            w = self.workload
            self._traces[activation_checkpointing] = trace_step(
                w.make_net, lambda: w.make_batch(w.micro_batch), micro_batch=w.micro_batch, accumulate=min(w.accumulate, 2),
                activation_checkpointing=activation_checkpointing, precision=w.precision, gradient_clip=w.gradient_clip)
        return self._traces[activation_checkpointing]

    def plan(self, layout: Layout, workload: Optional[Workload] = None) -> Plan:
        w = workload or self.workload
        trace = _rescaled(self.trace(w.activation_checkpointing), w.micro_batch)
        memory = plan_memory(trace, layout)
        tokens = w.micro_batch * w.accumulate * w.tokens_per_sample
        time = estimate_time(flops_per_token=w.flops_per_token or 6.0 * trace.n_params, tokens_per_rank=tokens,
                             micro_batches=w.accumulate, param_bytes=trace.param_bytes, layout=layout,
                             recompute=RECOMPUTE[w.activation_checkpointing],
                             peak_flops=self.hardware.peak_flops, mfu=self.hardware.mfu, bandwidth_gbps=self.hardware.bandwidth_gbps)
        return Plan(layout, w, trace, memory, time, self.hardware)

    def candidates(self, base: Layout) -> list[Plan]:
        """Every configuration of the search, planned (the same world size and global batch)."""
        w0, plans = self.workload, []
        for layout in _layouts(base, offload=self.hardware.on_gpu):
            for ac in AC_MODES:
                micro = w0.micro_batch
                while micro >= 1:
                    if (w0.micro_batch * w0.accumulate) % micro == 0:
                        w = replace(w0, activation_checkpointing=ac, micro_batch=micro,
                                    accumulate=w0.micro_batch * w0.accumulate // micro)
                        plans.append(self.plan(layout, w))
                    micro //= 2
        return plans

    def recommend(self, base: Layout, limit: int = 5) -> list[Plan]:
        """The cheapest configurations that fit, cheapest first: the shortest estimated step (without a peak
        FLOP/s: the least recomputation, then the least communication, then the largest micro-batch)."""
        fitting = [p for p in self.candidates(base) if p.fits]
        return sorted(fitting, key=_cost)[:limit]


def _cost(p: Plan) -> tuple:
    w = p.workload
    if p.time.step_s is not None:
        return (p.time.step_s, p.peak_bytes)
    return (RECOMPUTE[w.activation_checkpointing], p.time.comm_s, -w.micro_batch, p.peak_bytes)


def _layouts(base: Layout, offload: bool) -> list[Layout]:
    """The strategies the search tries for the base's world size (its DeepSpeed/FSDP settings kept);
    offloading only where there is a device to offload from."""
    n = base.world_size
    d = dict(offload_optimizer=False, offload_params=False)
    options = [replace(base, strategy="single", zero_stage=0, **d)] if n == 1 else [
        replace(base, strategy="ddp", zero_stage=0, **d),
        replace(base, strategy="deepspeed", zero_stage=1, **d),
        replace(base, strategy="deepspeed", zero_stage=2, **d),
        replace(base, strategy="fsdp2", zero_stage=0, **d),
        replace(base, strategy="deepspeed", zero_stage=3, **d),
    ]
    if offload:
        options.append(replace(base, strategy="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True))
    if base not in options:
        options.insert(0, base)
    return options


def _rescaled(trace: StepTrace, micro_batch: int) -> StepTrace:
    """The trace at another micro-batch: per-sample memory (activations, forward/backward temporaries) in proportion."""
    if micro_batch == trace.micro_batch:
        return trace
    f = micro_batch / trace.micro_batch
    phases = {name: (u if name == "optimizer" else u.scaled(activations=f, temporaries=f)) for name, u in trace.phases.items()}
    return replace(trace, phases=phases, micro_batch=micro_batch)


def describe_usage(u: Usage) -> dict[str, float]:
    return {"params": u.params, "grads": u.grads, "optimizer": u.optimizer, "activations": u.activations,
            "temporaries": u.temporaries, "total": u.total}
