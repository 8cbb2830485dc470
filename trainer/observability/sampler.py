"""The background sampler: every local GPU through NVML plus the host through psutil.

One sampler per node (run by local rank 0). Each sample is appended to
<run_dir>/perf/sys_<host>.jsonl and kept in a short in-memory window for the verdict and
the loggers. Without NVML the sampler says so once and keeps sampling the CPU side.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import psutil

from trainer.observability.nvml import GB, NvmlReader

log = logging.getLogger(__name__)


class SystemSampler:
    def __init__(self, path: Optional[Path], interval_s: float, host: str, keep: int = 1000,
                 watch_pid: Optional[int] = None):
        self.path = path
        self.interval_s = interval_s
        self.host = host
        self.samples: deque[dict] = deque(maxlen=keep)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._process = psutil.Process(watch_pid or os.getpid())
        self._file: Any = None
        self.nvml = NvmlReader()
        if not self.nvml.available:
            log.warning("GPU metrics off: %s. Sampling CPU and host memory only.", self.nvml.reason)

    def start(self) -> "SystemSampler":
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash keeps the samples
        self._process.cpu_percent(None)  # prime: the first call only starts psutil's interval
        psutil.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, name="perf-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        if self._file is not None:
            self._file.close()
            self._file = None
        self.nvml.close()

    def sample_once(self) -> dict:
        now = time.time()
        sample = {"t": round(now, 3), "host": self.host, "sys": self._read_sys()}
        if self.nvml.available:
            sample["gpus"] = self.nvml.read(now)
        self.samples.append(sample)
        if self._file is not None:
            self._file.write(json.dumps(sample) + "\n")
        return sample

    def recent(self, since: float = 0.0) -> list[dict]:
        return [s for s in list(self.samples) if s["t"] >= since]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception as e:  # never let monitoring kill training
                log.warning("system sampling failed: %s", e)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _read_sys(self) -> dict:
        p = self._process
        with p.oneshot():
            rss = p.memory_info().rss
            cpu = p.cpu_percent(None)
        workers_rss = 0
        for child in p.children(recursive=True):  # data-loader workers
            try:
                workers_rss += child.memory_info().rss
            except psutil.Error:
                pass
        vm = psutil.virtual_memory()
        return {
            "cpu_percent": cpu,  # this process, all threads (100 = one core)
            "host_cpu_percent": psutil.cpu_percent(None),
            "rss_gb": rss / GB,
            "workers_rss_gb": workers_rss / GB,
            "host_mem_used_gb": (vm.total - vm.available) / GB,
            "host_mem_total_gb": vm.total / GB,
            "host_mem_percent": vm.percent,
        }
