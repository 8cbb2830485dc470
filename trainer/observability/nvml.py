"""Reading every local GPU through NVML (`nvidia-ml-py`, imported as `pynvml`).

Each field is read with its own call; a field the device or driver does not support
(NotSupported, NoPermission, missing function in an older binding) is dropped after the
first failure and never asked again, so sampling stays cheap and quiet.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

# Clock-event ("throttle") reasons that mean the GPU runs slower than it could. Idle, application
# clock settings, sync boost and display clocks are left out: they are not a slowdown of training.
THROTTLE_REASONS = {
    "sw_power_cap": ("nvmlClocksEventReasonSwPowerCap", "nvmlClocksThrottleReasonSwPowerCap", 0x4),
    "hw_slowdown": ("nvmlClocksEventReasonHwSlowdown", "nvmlClocksThrottleReasonHwSlowdown", 0x8),
    "sw_thermal": ("nvmlClocksEventReasonSwThermalSlowdown", "nvmlClocksThrottleReasonSwThermalSlowdown", 0x20),
    "hw_thermal": ("nvmlClocksEventReasonHwThermalSlowdown", "nvmlClocksThrottleReasonHwThermalSlowdown", 0x40),
    "hw_power_brake": ("nvmlClocksEventReasonHwPowerBrakeSlowdown", "nvmlClocksThrottleReasonHwPowerBrakeSlowdown", 0x80),
}
THERMAL_REASONS = ("sw_thermal", "hw_thermal", "hw_slowdown")
POWER_REASONS = ("sw_power_cap", "hw_power_brake")

GB = 1024**3


class NvmlReader:
    """All GPUs on this node. `available` is False (with `reason`) without a driver or GPU."""

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        self._nv: Any = None
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._unsupported: set[tuple[int, str]] = set()
        self._nvlink_prev: dict[int, tuple[float, float, float]] = {}
        try:
            nv = importlib.import_module("pynvml")
            nv.nvmlInit()
            count = nv.nvmlDeviceGetCount()
            if count == 0:
                self.reason = "NVML found no GPU"
                nv.nvmlShutdown()
                return
            self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._names = [_text(nv.nvmlDeviceGetName(h)) for h in self._handles]
            self._nv = nv
            self.available = True
            self._masks = {name: _const(nv, names) for name, names in THROTTLE_REASONS.items()}
        except Exception as e:  # no library, no driver, no permission: the CPU side still runs
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})"

    @property
    def count(self) -> int:
        return len(self._handles)

    def names(self) -> list[str]:
        return list(self._names)

    def index_of_uuid(self, uuid: str) -> Optional[int]:
        """NVML index of the GPU with this UUID (CUDA ordinals differ under CUDA_VISIBLE_DEVICES)."""
        for i, h in enumerate(self._handles):
            got = self._field(i, "uuid", lambda: _text(self._nv.nvmlDeviceGetUUID(h)))
            if got is not None and (got == uuid or got.removeprefix("GPU-") == uuid.removeprefix("GPU-")):
                return i
        return None

    def close(self) -> None:
        if self.available:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self.available = False

    def read(self, now: float) -> list[dict]:
        return [self._read_one(i, h, now) for i, h in enumerate(self._handles)]

    def _field(self, index: int, name: str, fn: Any) -> Any:
        if (index, name) in self._unsupported:
            return None
        try:
            return fn()
        except Exception as e:  # NVMLError_NotSupported and friends, or an older binding
            self._unsupported.add((index, name))
            log.debug("NVML field %s unsupported on GPU %d: %s", name, index, e)
            return None

    def _read_one(self, i: int, h: Any, now: float) -> dict:
        nv, f = self._nv, self._field
        g: dict[str, Any] = {"index": i, "name": self._names[i]}
        util = f(i, "util", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            g["util"], g["mem_util"] = float(util.gpu), float(util.memory)
        mem = f(i, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            g["mem_used_gb"], g["mem_total_gb"] = mem.used / GB, mem.total / GB
        power = f(i, "power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        if power is not None:
            g["power_w"] = power / 1000.0
        limit = f(i, "power_limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        if limit is not None:
            g["power_limit_w"] = limit / 1000.0
        sm = f(i, "sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        if sm is not None:
            g["sm_clock_mhz"] = float(sm)
        sm_max = f(i, "sm_clock_max", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
        if sm_max is not None:
            g["sm_clock_max_mhz"] = float(sm_max)
        memclk = f(i, "mem_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
        if memclk is not None:
            g["mem_clock_mhz"] = float(memclk)
        temp = f(i, "temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        if temp is not None:
            g["temp_c"] = float(temp)
        reasons = f(i, "throttle", lambda: _throttle_mask(nv, h))
        if reasons is not None:
            g["throttle"] = [name for name, mask in self._masks.items() if reasons & mask]
        tx = f(i, "pcie_tx", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES))
        rx = f(i, "pcie_rx", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES))
        if tx is not None and rx is not None:  # KB/s
            g["pcie_tx_mbs"], g["pcie_rx_mbs"] = tx / 1000.0, rx / 1000.0
        link = f(i, "nvlink", lambda: self._nvlink_rate(i, h, now))
        if link is not None:
            g["nvlink_tx_mbs"], g["nvlink_rx_mbs"] = link
        return g

    def _nvlink_rate(self, i: int, h: Any, now: float) -> Optional[tuple[float, float]]:
        """NVLink data throughput from NVML's cumulative KiB counters (all links)."""
        nv = self._nv
        values = nv.nvmlDeviceGetFieldValues(
            h, [nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX]
        )
        if any(v.nvmlReturn != 0 for v in values):
            raise RuntimeError("NVLink throughput counters not supported")
        tx_kib, rx_kib = float(values[0].value.ullVal), float(values[1].value.ullVal)
        prev = self._nvlink_prev.get(i)
        self._nvlink_prev[i] = (now, tx_kib, rx_kib)
        if prev is None or now <= prev[0]:
            return None
        dt = now - prev[0]
        return (tx_kib - prev[1]) * 1.024e-3 / dt, (rx_kib - prev[2]) * 1.024e-3 / dt  # MB/s


def _throttle_mask(nv: Any, h: Any) -> int:
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(fn(h))


def _const(nv: Any, names: tuple[str, str, int]) -> int:
    new, old, value = names
    return int(getattr(nv, new, getattr(nv, old, value)))


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
