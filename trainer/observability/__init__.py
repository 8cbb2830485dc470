"""Always-on performance observability: step phases, throughput/MFU, NVML, stragglers, verdict, report.

Its settings are trainer.config's `ObservabilityConfig`. `PerfMonitor` and the other callbacks
import torch and Lightning, so they load on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PerfMonitor", "StragglerDelay", "StepWindowProfiler"]


def __getattr__(name: str) -> Any:
    if name == "PerfMonitor":
        from trainer.observability.monitor import PerfMonitor

        return PerfMonitor
    if name == "StragglerDelay":
        from trainer.observability.debug import StragglerDelay

        return StragglerDelay
    if name == "StepWindowProfiler":
        from trainer.observability.profiler import StepWindowProfiler

        return StepWindowProfiler
    raise AttributeError(f"module 'trainer.observability' has no attribute {name!r}")
