"""Summaries over a window of steps and of GPU samples: pure functions the monitor and tests share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from trainer.observability.nvml import POWER_REASONS, THERMAL_REASONS
from trainer.observability.timing import PHASES, StepTimes
from trainer.observability.verdict import GpuHealth


@dataclass
class WindowSummary:
    steps: int  # batches with a full step time
    step_s: Optional[float]  # mean seconds per batch
    busy_s: Optional[float]  # median own-work seconds per batch (straggler comparison)
    phase_s: dict[str, Optional[float]]  # mean seconds per batch
    fractions: dict[str, Optional[float]]  # median share of the step time over the window
    tokens_per_s: Optional[float]  # this rank
    samples_per_s: Optional[float]  # this rank


def summarize(steps: Sequence[StepTimes]) -> WindowSummary:
    timed = [s for s in steps if s.step_s is not None and s.step_s > 0]
    if not timed:
        return WindowSummary(0, None, None, {p: None for p in PHASES}, {p: None for p in PHASES}, None, None)
    total = sum(s.step_s for s in timed)
    phase_s, fractions = {}, {}
    for p in PHASES:
        vals = [getattr(s, p) for s in timed if getattr(s, p) is not None]
        phase_s[p] = sum(vals) / len(vals) if vals else None
        # Median of the per-step shares: one slow step (a GC pause, a busy neighbour) does not
        # move it. The shares need not add up to exactly 1.
        fractions[p] = median(getattr(s, p) / s.step_s for s in timed if getattr(s, p) is not None)
    tokens = [s.tokens for s in timed]
    return WindowSummary(
        steps=len(timed),
        step_s=total / len(timed),
        busy_s=median([s.busy_s for s in timed]),
        phase_s=phase_s,
        fractions=fractions,
        tokens_per_s=sum(tokens) / total if all(t is not None for t in tokens) else None,
        samples_per_s=sum(s.samples for s in timed) / total,
    )


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    v = sorted(x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def gpu_health(samples: Sequence[dict], host: str) -> Optional[GpuHealth]:
    """The worst-throttled GPU over NVML samples (dicts from SystemSampler), or None without GPU data."""
    per_gpu: dict[int, list[dict]] = {}
    for s in samples:
        for g in s.get("gpus", []):
            per_gpu.setdefault(g["index"], []).append(g)
    worst: Optional[GpuHealth] = None
    for index, gs in sorted(per_gpu.items()):
        with_reasons = [g for g in gs if "throttle" in g]
        n = max(1, len(with_reasons))
        thermal = sum(any(r in THERMAL_REASONS for r in g["throttle"]) for g in with_reasons) / n
        power = sum(any(r in POWER_REASONS for r in g["throttle"]) for g in with_reasons) / n
        reasons = sorted({r for g in with_reasons for r in g["throttle"]})
        health = GpuHealth(
            where=f"{host} GPU {index}", thermal_fraction=thermal, power_fraction=power,
            sm_clock_mhz=mean(g.get("sm_clock_mhz") for g in gs),
            sm_clock_max_mhz=max((g["sm_clock_max_mhz"] for g in gs if "sm_clock_max_mhz" in g), default=None),
            temp_c=max((g["temp_c"] for g in gs if "temp_c" in g), default=None),
            reasons=reasons,
        )
        if worst is None or max(thermal, power) > max(worst.thermal_fraction, worst.power_fraction):
            worst = health
    return worst


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def gpu_memory_fraction(samples: Sequence[dict], index: int) -> Optional[float]:
    """Highest used/total memory of NVML GPU `index` over the samples (all processes on it count)."""
    fracs = [g["mem_used_gb"] / g["mem_total_gb"] for s in samples for g in s.get("gpus", [])
             if g["index"] == index and g.get("mem_total_gb")]
    return max(fracs) if fracs else None
