"""Step-phase timing: marks at phase boundaries, resolved lazily into durations.

On CPU a mark is a host clock reading (no sync needed: CPU work is done when the call
returns). On CUDA a mark is an event recorded on the current stream; events are read only
once the GPU has passed them (`Event.query()`), usually a step or two later, so timing never
synchronises the device on the hot path.

Phases of one training batch, between Lightning hooks:
  data      previous batch end -> batch start   (fetch, collate, host->device; on CUDA the
                                                 GPU-idle gap, i.e. how long the device waited)
  forward   batch start -> before backward
  backward  before backward -> after backward, minus exposed communication
  comm      exposed communication: last gradient bucket's all-reduce finishing after the last
            bucket was handed over (from the DDP comm hook; None where not separable)
  optimizer after backward -> batch end          (clipping, optimizer step, zero_grad)
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

PHASES = ("data", "forward", "backward", "comm", "optimizer")
log = logging.getLogger("trainer.perf")


class HostClock:
    synchronous = True

    def mark(self) -> float:
        return time.perf_counter()

    def ready(self, mark: Any) -> bool:
        return True

    def seconds(self, start: Any, end: Any) -> float:
        return end - start

    def flush(self) -> None:
        pass


class CudaClock:
    """CUDA events on the current stream; `ready` never blocks."""

    synchronous = False

    def __init__(self, device: Any):
        import torch

        self._torch = torch
        self.device = device

    def mark(self) -> Any:
        # Record on this rank's device explicitly: a DDP comm-hook callback may run on a thread
        # whose current device is another GPU (its current stream for OUR device is the one
        # synchronised with the communication, which is what we want to time).
        event = self._torch.cuda.Event(enable_timing=True)
        event.record(self._torch.cuda.current_stream(self.device))
        return event

    def ready(self, mark: Any) -> bool:
        return mark.query()

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def flush(self) -> None:
        self._torch.cuda.synchronize(self.device)  # once, at the end of training


@dataclass
class StepMarks:
    step: int  # optimizer step (trainer.global_step) the batch belongs to
    batch_idx: int
    samples: int
    tokens: Optional[int]
    interrupted: bool  # validation/checkpointing ran since the previous batch: data wait not meaningful
    wall_time: float  # time.time() at batch end, for timelines
    prev_end: Any = None
    start: Any = None
    before_backward: Any = None
    after_backward: Any = None
    end: Any = None
    comm: list = field(default_factory=list)  # [(launch_mark, done_mark)] per gradient bucket


@dataclass
class StepTimes:
    step: int
    batch_idx: int
    samples: int
    tokens: Optional[int]
    wall_time: float
    step_s: Optional[float]  # prev end -> end (None for the first batch or after an interruption)
    compute_s: float  # start -> end
    data: Optional[float]
    forward: Optional[float]
    backward: Optional[float]
    comm: Optional[float]
    optimizer: Optional[float]

    @property
    def busy_s(self) -> Optional[float]:
        """This rank's own work in the step: the step minus time spent waiting on other ranks."""
        if self.step_s is None:
            return None
        return self.step_s - (self.comm or 0.0)

    def as_record(self) -> dict:
        return {
            "kind": "step", "step": self.step, "batch_idx": self.batch_idx, "t": round(self.wall_time, 3),
            "samples": self.samples, "tokens": self.tokens, "step_s": _r(self.step_s), "compute_s": _r(self.compute_s),
            **{p: _r(getattr(self, p)) for p in PHASES}, "busy_s": _r(self.busy_s),
        }


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 6)


class StepTimer:
    """Collects marks per batch and hands back resolved StepTimes in order, without blocking."""

    def __init__(self, clock: Any, max_pending: int = 64):
        self.clock = clock
        self._pending: deque[StepMarks] = deque()
        self._max_pending = max_pending
        self._current: Optional[StepMarks] = None
        self._last_end: Any = None
        self._interrupted = True  # the first batch has no meaningful data wait
        self.comm_failed = False

    def interrupt(self) -> None:
        """Something other than training (validation, checkpointing) runs now: the batch in
        progress, if any, and the gap before the next one are left out of the step timing."""
        self._interrupted = True
        if self._current is not None:
            self._current.interrupted = True

    def batch_start(self, batch_idx: int, samples: int, tokens: Optional[int]) -> None:
        start = self.clock.mark()
        self._current = StepMarks(-1, batch_idx, samples, tokens, self._interrupted, 0.0,
                                  prev_end=None if self._interrupted else self._last_end, start=start)
        self._interrupted = False

    def before_backward(self) -> None:
        if self._current is not None:
            self._current.before_backward = self.clock.mark()

    def after_backward(self) -> None:
        if self._current is not None:
            self._current.after_backward = self.clock.mark()

    def comm_bucket(self, launch: Any, done: Any) -> None:
        if self._current is not None:
            self._current.comm.append((launch, done))

    def batch_end(self, step: int) -> None:
        cur = self._current
        if cur is None:
            return
        cur.step = step  # the optimizer step this batch counted towards (after any increment)
        cur.end = self._last_end = self.clock.mark()
        cur.wall_time = time.time()
        self._pending.append(cur)
        self._current = None
        while len(self._pending) > self._max_pending:  # a GPU far behind: drop the oldest unread
            self._pending.popleft()

    def poll(self, final: bool = False) -> list[StepTimes]:
        """Resolve every pending batch whose marks the device has passed. `final` waits for all."""
        if final and self._pending:
            self.clock.flush()
        out = []
        while self._pending and (final or self._ready(self._pending[0])):
            out.append(self._resolve(self._pending.popleft()))
        return out

    def _ready(self, m: StepMarks) -> bool:
        if not self.clock.ready(m.end):
            return False
        return all(self.clock.ready(done) for _, done in m.comm if done is not None)

    def _resolve(self, m: StepMarks) -> StepTimes:
        sec = self.clock.seconds
        full = m.prev_end is not None and not m.interrupted
        step_s = sec(m.prev_end, m.end) if full else None
        data = sec(m.prev_end, m.start) if m.prev_end is not None else None
        forward = backward = optimizer = comm = None
        if m.before_backward is not None and m.after_backward is not None:
            forward = sec(m.start, m.before_backward)
            backward = sec(m.before_backward, m.after_backward)
            optimizer = sec(m.after_backward, m.end)
            done = [d for _, d in m.comm if d is not None]
            if done and not self.comm_failed:
                # The backward call returns only when every bucket is reduced: the part of the
                # last reduction that outlasts the last gradient computed is time spent waiting.
                try:
                    last_launch = max((lch for lch, _ in m.comm), key=lambda x: sec(m.start, x))
                    last_done = max(done, key=lambda x: sec(m.start, x))
                    comm = min(max(sec(last_launch, last_done), 0.0), backward)
                    backward -= comm
                except RuntimeError as e:  # never let timing break training: stop separating comm
                    self.comm_failed = True
                    log.warning("perf: communication timing disabled (%s); it stays inside backward", e)
        if m.interrupted and m.prev_end is not None:
            optimizer = None  # a checkpoint was saved inside this batch, after backward
        return StepTimes(m.step, m.batch_idx, m.samples, m.tokens, m.wall_time, step_s,
                         sec(m.start, m.end), data, forward, backward, comm, optimizer)
