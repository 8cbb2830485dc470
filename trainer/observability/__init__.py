"""Always-on performance observability: step phases, throughput/MFU, NVML, stragglers, verdict."""
from trainer.observability.config import ObservabilityConfig
from trainer.observability.monitor import PerfMonitor

__all__ = ["ObservabilityConfig", "PerfMonitor"]
