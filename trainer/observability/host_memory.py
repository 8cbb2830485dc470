"""Host memory as the allocator and the kernel see it: bytes in use by malloc (glibc's mallinfo2),
the resident set size, and a sampler that keeps the peak of both per named phase.

On CPU this is the device memory of a run (tensors are malloc'ed), so it is what the memory plan is
checked against (benchmarks/memory.py). Run with MALLOC_ARENA_MAX=1 so every thread allocates from
the arena mallinfo2 reports (it reports the main arena and all mmapped chunks).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from typing import Optional


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc_mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _libc_mallinfo2()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def malloc_in_use() -> Optional[int]:
    """Bytes malloc has handed out and not taken back (arena chunks in use + mmapped chunks); None
    where glibc's mallinfo2 is not available."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakSampler:
    """A background thread sampling malloc_in_use() and rss_bytes(); `phase(name)` switches the phase the
    samples are attributed to (None: not recorded). Peaks are bytes above `baseline()`'s moment."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s = interval_s
        self.base_malloc, self.base_rss = malloc_in_use() or 0, rss_bytes()
        self.peaks: dict[str, dict[str, int]] = {}
        self._phase: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-memory-sampler", daemon=True)

    def baseline(self) -> None:
        self.base_malloc, self.base_rss = malloc_in_use() or 0, rss_bytes()

    def start(self) -> "PeakSampler":
        # Python hands the GIL to another thread every 5 ms by default: long enough to miss a short-lived
        # peak (the optimizer step's temporaries). Switch far more often while sampling.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, 1e-5))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def phase(self, name: Optional[str]) -> None:
        self._sample()  # the boundary itself belongs to the phase that ends
        self._phase = name
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    def _sample(self) -> None:
        name = self._phase
        if name is None:
            return
        peak = self.peaks.setdefault(name, {"malloc": 0, "rss": 0})
        peak["malloc"] = max(peak["malloc"], (malloc_in_use() or 0) - self.base_malloc)
        peak["rss"] = max(peak["rss"], rss_bytes() - self.base_rss)
