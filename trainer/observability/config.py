"""The `observability:` config section (configs/callbacks/default.yaml fills it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ObservabilityConfig:
    enabled: bool = True
    nvml_interval_s: float = 2.0  # background NVML/psutil sampling period (one sampler per node)
    straggler_every_n_steps: int = 50  # ranks exchange step times every N optimizer steps
    straggler_margin: float = 0.2  # a rank whose busy time exceeds the median by this fraction is a straggler
    verdict_every_n_steps: int = 100  # bottleneck verdict at this interval (and always at the end)
    warmup_steps: int = 3  # first steps left out of the statistics (compilation, allocator warm-up)
    window_steps: int = 100  # the verdict looks at the most recent N measured steps
    peak_tflops: Optional[float] = None  # per-device dense peak for MFU; None: from the device table
    input_bound_fraction: float = 0.2  # data wait above this share of the step: input-bound
    comm_bound_fraction: float = 0.25  # exposed communication above this share: communication-bound
    compute_bound_fraction: float = 0.7  # forward+backward+optimizer above this share: compute-bound
    memory_pressure_fraction: float = 0.95  # reserved (or NVML used) memory above this share of the device
    throttle_fraction: float = 0.2  # throttle reasons active in more than this share of GPU samples
    write_step_records: bool = True  # per-step JSON lines in <run_dir>/perf/rank<k>.jsonl


def check_observability_config(cfg: ObservabilityConfig) -> None:
    """Ranges; raises UserError naming the key."""
    from trainer.errors import UserError

    for key in ("nvml_interval_s",):
        if getattr(cfg, key) <= 0:
            raise UserError(f"observability.{key} must be > 0, got {getattr(cfg, key)}")
    for key in ("straggler_every_n_steps", "verdict_every_n_steps", "window_steps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"observability.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.warmup_steps < 0:
        raise UserError(f"observability.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.straggler_margin <= 0:
        raise UserError(f"observability.straggler_margin must be > 0 (e.g. 0.2 for 20%), got {cfg.straggler_margin}")
    for key in ("input_bound_fraction", "comm_bound_fraction", "compute_bound_fraction",
                "memory_pressure_fraction", "throttle_fraction"):
        v = getattr(cfg, key)
        if not 0.0 < v <= 1.0:
            raise UserError(f"observability.{key} must be in (0, 1], got {v}")
    if cfg.peak_tflops is not None and cfg.peak_tflops <= 0:
        raise UserError(
            f"observability.peak_tflops must be a positive number of dense TFLOP/s per device (or null), got {cfg.peak_tflops}"
        )
