"""A step-time estimate: compute from FLOPs and the device's dense peak, communication from the volume
each strategy moves and the bandwidth between ranks.

- compute: FLOPs per token (the model's own count, else 6 x parameters) x tokens per rank per step x
  the recomputation factor of activation checkpointing (full: one more forward, 4/3), divided by
  peak x the fraction of it reached (`plan.mfu`).
- communication, per rank and optimizer step (Ψ parameter bytes, ring collectives move (N-1)/N of
  the buffer each): DDP all-reduces the gradients once (2Ψ); ZeRO-1/2 reduce-scatter the gradients and
  all-gather the parameters (2Ψ, the reduce-scatter every micro-batch); ZeRO-3/FSDP/FSDP2 all-gather
  the parameters in forward and backward and reduce-scatter the gradients (3Ψ per micro-batch).
  Offloading the optimizer adds the gradients down and the parameters up over PCIe.
- the estimate assumes communication overlaps compute: step = max(compute, communication), with
  both shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from trainer.planning.memory import Layout

PCIE_GBPS = 25.0  # host <-> device, per GPU (PCIe 4 x16 in practice)


@dataclass(frozen=True)
class TimeEstimate:
    compute_s: Optional[float]  # None: no peak FLOP/s known for the device
    comm_s: float
    comm_bytes: float  # bytes each rank sends per optimizer step

    @property
    def step_s(self) -> Optional[float]:
        return None if self.compute_s is None else max(self.compute_s, self.comm_s)


def estimate_time(*, flops_per_token: float, tokens_per_rank: int, micro_batches: int, param_bytes: float,
                  layout: Layout, recompute: float, peak_flops: Optional[float], mfu: float,
                  bandwidth_gbps: float) -> TimeEstimate:
    flops = flops_per_token * tokens_per_rank * recompute
    compute = flops / (peak_flops * mfu) if peak_flops else None
    n = max(1, layout.world_size)
    ring = (n - 1) / n
    sharded = layout.strategy in ("fsdp", "fsdp2") or (layout.strategy == "deepspeed" and layout.zero_stage == 3)
    if n == 1:
        volume = 0.0
    elif sharded:
        volume = 3 * param_bytes * ring * micro_batches
    elif layout.strategy == "deepspeed":
        volume = param_bytes * ring * (micro_batches + 1)  # reduce-scatter per micro-batch, one all-gather
    else:
        volume = 2 * param_bytes * ring  # one all-reduce per step (no_sync inside the accumulation)
    comm = volume / (bandwidth_gbps * 1e9)
    if layout.offload_optimizer:
        comm += 2 * param_bytes / n / (PCIE_GBPS * 1e9)
    return TimeEstimate(compute, comm, volume)
