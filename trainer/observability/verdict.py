"""The bottleneck verdict: documented rules over the measured numbers.

Rules are checked in a fixed order; the first that fires names the bottleneck, every rule
is reported (fired or not) with its evidence so the verdict table shows why. The order puts
causes before their symptoms: a straggler makes every other rank wait in the all-reduce
(which alone would read as communication-bound), and a GPU starved by its input or held
back by throttling also shows low MFU.

  1 straggler            one rank's busy time (step minus time waiting on others) exceeds the
                         median of the other ranks by more than straggler_margin
  2 input-bound          data wait >= input_bound_fraction of the step
  3 communication-bound  exposed communication >= comm_bound_fraction of the step
  4 memory pressure      reserved (or NVML used) memory >= memory_pressure_fraction of the device,
                         or the CUDA caching allocator had to free and retry (alloc retries > 0)
  5 throttling           a thermal or power clock-event reason active in >= throttle_fraction of
                         the GPU samples
  6 compute-bound        forward + backward + optimizer >= compute_bound_fraction of the step
  7 no clear bottleneck  none of the above
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

INPUT, COMM, COMPUTE, MEMORY, THROTTLE, STRAGGLER, NONE = (
    "input-bound", "communication-bound", "compute-bound", "memory-capacity pressure",
    "thermal/power throttling", "straggler", "no clear bottleneck",
)


@dataclass
class Thresholds:
    input_bound_fraction: float = 0.2
    comm_bound_fraction: float = 0.25
    compute_bound_fraction: float = 0.7
    memory_pressure_fraction: float = 0.95
    throttle_fraction: float = 0.2
    straggler_margin: float = 0.2


@dataclass
class GpuHealth:
    """Worst GPU in the window (over all nodes that reported)."""
    where: str  # "host gpu i"
    thermal_fraction: float  # share of samples with a thermal slowdown reason
    power_fraction: float  # share of samples with a power-cap/brake reason
    sm_clock_mhz: Optional[float] = None
    sm_clock_max_mhz: Optional[float] = None
    temp_c: Optional[float] = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Evidence:
    step: int
    world_size: int
    measured_steps: int
    step_s: Optional[float]
    fractions: dict[str, Optional[float]]  # data, forward, backward, comm, optimizer (median over ranks)
    comm_note: str = ""  # why comm is not separated, if it is not
    tokens_per_s: Optional[float] = None  # all ranks
    samples_per_s: Optional[float] = None
    mfu: Optional[float] = None
    mfu_note: str = ""
    device: str = "cpu"
    mem_frac: Optional[float] = None  # max over ranks: reserved / total (CUDA) or NVML used / total
    alloc_retries: int = 0
    gpu: Optional[GpuHealth] = None
    busy_s: list[Optional[float]] = field(default_factory=list)  # per rank (from the exchange)
    num_workers: Optional[int] = None
    precision: Optional[str] = None  # what the run uses: a fix already in place is not advised
    compiled: Optional[bool] = None
    cpu_native_bf16: Optional[bool] = None  # a CPU with bf16 instructions (AVX512-BF16 / AMX), CPU runs only


@dataclass
class Finding:
    rule: str
    fired: bool
    evidence: str
    fix: str = ""


@dataclass
class Verdict:
    step: int
    bottleneck: str
    evidence: str
    fix: str
    findings: list[Finding]
    straggler_rank: Optional[int] = None
    numbers: dict = field(default_factory=dict)

    @property
    def headline(self) -> str:
        name = f"straggler rank {self.straggler_rank}" if self.bottleneck == STRAGGLER else self.bottleneck
        return f"{name}: {self.evidence}" + (f"; {self.fix}" if self.fix else "")

    def to_json(self) -> dict:
        return asdict(self)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def stragglers(busy_s: list[Optional[float]], margin: float) -> list[tuple[int, float]]:
    """(rank, slowdown) for ranks slower than the median of the OTHER ranks by more than margin.

    Comparing with the others (not the median including the rank itself) keeps a 2-rank run
    honest: with two ranks the overall median is the mean and would halve a real slowdown.
    """
    out = []
    for rank, b in enumerate(busy_s):
        others = sorted(x for r, x in enumerate(busy_s) if r != rank and x is not None)
        if b is None or not others:
            continue
        median = others[len(others) // 2] if len(others) % 2 else 0.5 * (others[len(others) // 2 - 1] + others[len(others) // 2])
        if median > 0 and b > median * (1 + margin):
            out.append((rank, b / median - 1))
    return sorted(out, key=lambda rs: -rs[1])


# Measured on a CPU with native bf16 (benchmarks/cpu_advice.py -> docs/benchmarks/cpu_advice.json, CPU time
# per step of the default model against the default settings, same run): bf16-mixed 0.79x, trainer.compile=true
# 0.81x, kernels=fused 0.96x. On a CPU only the first two are advised (bf16 only with native bf16 instructions:
# without them CPU autocast emulates bf16); kernels=fused's gain is within what a busy machine varies.
CPU_BF16_RATIO, CPU_COMPILE_RATIO = 0.79, 0.81


def compute_fixes(ev: Evidence) -> str:
    """The compute-bound advice for this device class, leaving out what the run already does."""
    bf16 = ev.precision is not None and "bf16" in ev.precision
    fixes = []
    if ev.device == "cpu":
        if ev.cpu_native_bf16 and not bf16:
            fixes.append(f"trainer.precision=bf16-mixed (measured {CPU_BF16_RATIO:.2f}x CPU time per step on a CPU with native bf16)")
        if not ev.compiled:
            fixes.append(f"trainer.compile=true (measured {CPU_COMPILE_RATIO:.2f}x)")
        return "the CPU is the limit" + (": try " + ", ".join(fixes) if fixes else "")
    if not bf16:
        fixes.append("bf16 (trainer.precision=bf16-mixed)")
    if not ev.compiled:
        fixes.append("trainer.compile=true")
    # Not kernels=fused: it forces kernels measured slower than torch.compile of the reference (fused
    # linear CE 0.75x, SwiGLU forward 0.95x on an H200); kernels=auto, the default, already takes a
    # kernel only where it measured faster (trainer/ops/auto_table.json).
    fixes += ["a larger micro-batch if MFU is low", "more devices"]
    return "the GPU is the limit: use " + ", ".join(fixes)


def decide(ev: Evidence, th: Thresholds) -> Verdict:
    f = ev.fractions
    data, comm = f.get("data"), f.get("comm")
    compute = sum(v for k, v in f.items() if k in ("forward", "backward", "optimizer") and v is not None) or None
    findings: list[Finding] = []
    straggler_rank = None

    slow = stragglers(ev.busy_s, th.straggler_margin) if len(ev.busy_s) > 1 else []
    if slow:
        rank, slowdown = slow[0]
        straggler_rank = rank
        others = [b for r, b in enumerate(ev.busy_s) if r != rank and b is not None]
        findings.append(Finding(
            STRAGGLER, True,
            f"rank {rank} is {slowdown:.0%} slower than the other ranks' median "
            f"(busy {ev.busy_s[rank]:.3f} s/step vs {sorted(others)[len(others) // 2]:.3f} s); the others wait for it in every collective",
            f"look at rank {rank}'s node: throttling or clocks (gpu/… metrics), other processes, slower disk or data path; "
            "exclude or replace that node if it persists",
        ))
    else:
        n = len(ev.busy_s)
        findings.append(Finding(STRAGGLER, False, "single process" if n <= 1 else
                                f"all {n} ranks within {th.straggler_margin:.0%} of the median busy time"))

    workers = f" (now {ev.num_workers})" if ev.num_workers is not None else ""
    findings.append(Finding(
        INPUT, data is not None and data >= th.input_bound_fraction,
        f"the loader waits {_pct(data)} of each step",
        f"raise data.num_workers{workers}, pre-tokenize or cache the dataset, keep pin_memory on",
    ))
    findings.append(Finding(
        COMM, comm is not None and comm >= th.comm_bound_fraction,
        f"exposed communication takes {_pct(comm)} of each step" if comm is not None else (ev.comm_note or "communication not separated"),
        "raise the micro-batch or accumulate_grad_batches (fewer all-reduces per sample), overlap communication "
        "(strategy.overlap_comm, larger buckets), check the interconnect (NVLink/InfiniBand)",
    ))
    mem_fires = (ev.mem_frac is not None and ev.mem_frac >= th.memory_pressure_fraction) or ev.alloc_retries > 0
    findings.append(Finding(
        MEMORY, mem_fires,
        f"device memory at {_pct(ev.mem_frac)} of capacity, {ev.alloc_retries} allocator retries",
        "lower data.batch_size and raise trainer.accumulate_grad_batches, shard states (strategy=fsdp or "
        "deepspeed_zero2/3), or offload (deepspeed_zero3_offload)",
    ))
    g = ev.gpu
    throttled = g is not None and max(g.thermal_fraction, g.power_fraction) >= th.throttle_fraction
    if g is not None:
        kind = "thermal" if g.thermal_fraction >= g.power_fraction else "power"
        clock = f", SM clock {g.sm_clock_mhz:.0f}/{g.sm_clock_max_mhz:.0f} MHz" if g.sm_clock_mhz and g.sm_clock_max_mhz else ""
        temp = f", {g.temp_c:.0f} C" if g.temp_c is not None else ""
        throttle_ev = (f"{g.where}: {kind} slowdown ({', '.join(g.reasons) or 'none'}) in "
                       f"{max(g.thermal_fraction, g.power_fraction):.0%} of samples{clock}{temp}")
    else:
        throttle_ev = "no GPU samples (NVML unavailable)"
    findings.append(Finding(
        THROTTLE, throttled, throttle_ev,
        "check cooling and power limits (nvidia-smi -q -d PERFORMANCE,POWER,TEMPERATURE); "
        "a power cap below the default limit slows every step",
    ))
    mfu = f"MFU {_pct(ev.mfu)}" if ev.mfu is not None else f"MFU unknown ({ev.mfu_note})" if ev.mfu_note else "MFU unknown"
    findings.append(Finding(
        COMPUTE, compute is not None and compute >= th.compute_bound_fraction,
        f"forward+backward+optimizer take {_pct(compute)} of each step, {mfu}",
        compute_fixes(ev),
    ))

    fired = next((x for x in findings if x.fired), None)
    numbers = {
        "step_s": ev.step_s, "tokens_per_s": ev.tokens_per_s, "samples_per_s": ev.samples_per_s, "mfu": ev.mfu,
        **{f"frac_{k}": v for k, v in f.items()}, "mem_frac": ev.mem_frac, "alloc_retries": ev.alloc_retries,
        "busy_s_per_rank": ev.busy_s, "measured_steps": ev.measured_steps, "world_size": ev.world_size,
    }
    if fired is None:
        parts = f"data {_pct(data)}, compute {_pct(compute)}, comm {_pct(comm)}, {mfu}"
        return Verdict(ev.step, NONE, f"no phase dominates ({parts})", "", findings, None, numbers)
    return Verdict(ev.step, fired.rule, fired.evidence, fired.fix, findings,
                   straggler_rank if fired.rule == STRAGGLER else None, numbers)


def write_verdicts(path, final: Optional[Verdict], history: list[Verdict]) -> None:
    """perf/verdict.json: the latest (final) verdict and the interval verdicts before it."""
    from trainer.files import atomic_write_json

    latest = final or (history[-1] if history else None)
    doc = {"final": final is not None, "verdict": latest.to_json() if latest else None,
           "headline": latest.headline if latest else None, "history": [v.to_json() for v in history]}
    atomic_write_json(path, doc, sort_keys=False)
