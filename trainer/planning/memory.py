"""Per-device memory of a configuration: the traced single-process step (planning/trace.py), laid out
as the strategy lays it out on each rank.

For each phase (forward, backward, optimizer step) the trace's parameters, gradients and optimizer
state are replaced by what one rank holds under the strategy, and the strategy's own buffers are
added; activations are per rank already (the trace runs one rank's micro-batch). With Ψ parameter
bytes (fp32: 4 per parameter), N data-parallel ranks:

| strategy | parameters | gradients | optimizer state | temporaries added |
|---|---|---|---|---|
| single | Ψ | Ψ | 2Ψ | - |
| ddp | Ψ | Ψ in DDP's buckets, held in every phase | 2Ψ | - |
| fsdp, fsdp2 | Ψ/N + 2 gathered blocks in fwd/bwd | Ψ/N + one unsharded block in bwd | 2Ψ/N | FSDP2 keeps the root (embeddings, head) gathered through fwd/bwd |
| ddp (forward of step 2) | | | | DDP rebuilds its buckets in gradient order: Ψ more for a moment |
| ZeRO-1, ZeRO-2 | Ψ + fp32 master Ψ/N | Ψ in bwd (DeepSpeed frees them only in its step); none in fwd; Ψ + 2Ψ/N in the step | 2Ψ/N | gradient buckets in bwd (`reduce_bucket_size`, x2 with `overlap_comm`) |
| ZeRO-3 | Ψ/N + fp32 master Ψ/N + gathered blocks in fwd/bwd | Ψ/N + a reduce bucket, always | 2Ψ/N | 3Ψ/N in bwd and the step |

Offloaded optimizer state (and with offload_params the ZeRO-3 partitions) moves from the device to
host memory (`host` below); on a CPU run both are the same memory. The optimizer step's temporaries
scale with the state the rank updates. DeepSpeed's terms beyond the ZeRO paper's were read from its
code (the fp32 master copy, the gradient buckets, the gradients its step holds) or, for ZeRO-3's 3Ψ/N of
reduce-scatter and step buffers, fitted to the allocator on 2 ranks at two model sizes
(benchmarks/memory.py; their growth with N is assumed, not measured). The ZeRO paper's formula is the parameters, gradients and optimizer
columns without any buffer, temporary or activation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer.planning.trace import PHASES, StepTrace, Usage

FP32 = 4


@dataclass(frozen=True)
class Layout:
    """How a strategy places the training state on a rank (typed strategy settings, resolved)."""

    strategy: str  # single | ddp | fsdp | fsdp2 | deepspeed
    world_size: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000  # elements
    stage3_prefetch_bucket_size: int = 50_000_000  # elements
    fsdp2_reshard_after_forward: bool = True
    param_dtype_bytes: int = FP32  # bytes per parameter of the gathered working copy (bf16 under fsdp2 mixed precision: 2)

    @property
    def name(self) -> str:
        if self.strategy == "deepspeed":
            return f"zero{self.zero_stage}" + ("_offload" if self.offload_optimizer else "")
        return self.strategy


@dataclass(frozen=True)
class MemoryPlan:
    layout: Layout
    phases: dict[str, Usage]  # device bytes per rank at each phase's peak
    host: float  # bytes per rank kept in host memory instead (offload)
    formula: Usage = field(default_factory=Usage)  # ZeRO paper: params, grads, optimizer only

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: self.phases[p].total)

    @property
    def peak(self) -> Usage:
        return self.phases[self.peak_phase]

    @property
    def device_bytes(self) -> float:
        return self.peak.total

    def on_one_host(self) -> dict[str, float]:
        """Per-phase totals when device and host are the same memory (a CPU run)."""
        return {p: u.total + self.host for p, u in self.phases.items()}


def plan_memory(trace: StepTrace, layout: Layout) -> MemoryPlan:
    n = max(1, layout.world_size)
    psi, grads, opt = trace.param_bytes, trace.grad_bytes, trace.optimizer_bytes
    s = layout.strategy
    phases: dict[str, Usage] = {}
    host = 0.0
    for phase in PHASES:
        u = trace.phases[phase]
        in_step = phase == "optimizer"
        g_frac = u.grads / grads if grads else 0.0  # how much of the gradient exists at this phase's peak
        if s in ("single", "ddp"):
            out = u
            if s == "ddp":  # gradients live in DDP's buckets (gradient_as_bucket_view) from the first backward on;
                # the second step's forward rebuilds the buckets in gradient order: old and new are both alive
                rebuild = grads if phase == "forward" else 0.0
                out = Usage(u.params, grads, u.optimizer, u.activations, u.temporaries + rebuild)
        elif s in ("fsdp", "fsdp2"):
            working = 0.0 if in_step else 2 * trace.block_param_bytes * layout.param_dtype_bytes / FP32
            if s == "fsdp2" and not in_step:
                working += trace.root_param_bytes * (n - 1) / n  # the root stays gathered from forward to backward
            grad_working = trace.block_param_bytes if phase == "backward" else 0.0
            out = Usage(psi / n + working, g_frac * grads / n + grad_working, u.optimizer / n, u.activations,
                        u.temporaries / n if in_step else u.temporaries)
        elif s == "deepspeed":
            out, off = _zero(u, trace, layout, phase, g_frac)
            host = max(host, off)
        else:
            raise ValueError(f"no memory layout for strategy {s!r}")
        phases[phase] = out
    return MemoryPlan(layout, phases, host, formula=zero_formula(psi, layout))


def _zero(u: Usage, trace: StepTrace, layout: Layout, phase: str, g_frac: float) -> tuple[Usage, float]:
    """DeepSpeed ZeRO-1/2/3 on one rank: (device usage, bytes offloaded to the host).

    DeepSpeed frees the gradients in its step, so a forward holds none (unless it accumulates); its step
    holds the parameters' gradients, this rank's averaged partition and that partition flattened
    (ZeRO-1/2); backward adds the gradient buckets (measured: benchmarks/memory.py)."""
    n, stage = max(1, layout.world_size), layout.zero_stage
    psi, grads = trace.param_bytes, trace.grad_bytes
    master = psi / n  # DeepSpeed's fp32 master partition (kept even when training in fp32)
    buckets = layout.reduce_bucket_size * FP32 * (2 if layout.overlap_comm else 1) if layout.contiguous_gradients else 0.0
    optimizer = u.optimizer / n
    temporaries = u.temporaries / n if phase == "optimizer" else u.temporaries
    held = g_frac if phase == "backward" or trace.micro_batch_accumulates else 0.0
    if stage in (1, 2):
        params = psi + master
        # Both stages keep every parameter's gradient until the step, which frees them after flattening its partition.
        grad_bytes = grads + 2 * grads / n if phase == "optimizer" else held * grads
        if phase == "backward":
            temporaries += buckets
    else:
        gathered = 0.0 if phase == "optimizer" else min(psi, 2 * trace.block_param_bytes)
        params = psi / n + master + gathered
        grad_bytes = grads / n + layout.reduce_bucket_size * FP32  # a flat partition and a reduce bucket, always
        if phase != "forward":  # reduce-scatter and step buffers of partition size (fitted on 2 ranks, see above)
            temporaries += 3 * psi / n
    offloaded = 0.0
    if layout.offload_optimizer:
        offloaded += optimizer + master
        optimizer, params = 0.0, params - master
        if phase == "optimizer":
            offloaded += temporaries
            temporaries = 0.0
    if layout.offload_params and stage == 3:
        offloaded += psi / n
        params -= psi / n
    return Usage(params, grad_bytes, optimizer, u.activations, temporaries), offloaded


def zero_formula(param_bytes: float, layout: Layout) -> Usage:
    """The ZeRO paper's per-rank model-state bytes for mixed-free fp32 Adam: 4 + 4 + 8 bytes per parameter,
    sharded per stage (FSDP = stage 3). Activations and buffers are outside the formula."""
    n = max(1, layout.world_size)
    p, g, o = param_bytes, param_bytes, 2 * param_bytes
    stage = {"fsdp": 3, "fsdp2": 3}.get(layout.strategy, layout.zero_stage if layout.strategy == "deepspeed" else 0)
    if stage >= 1:
        o /= n
    if stage >= 2:
        g /= n
    if stage >= 3:
        p /= n
    return Usage(params=p, grads=g, optimizer=o)
