"""The benchmarks' step clock: which steps it times, and the window it reports."""
import time

import pytest

from benchmarks.common import StepClock


def test_clock_times_only_the_steps_after_warmup():
    clock = StepClock(warmup=2, total=5)
    clock.start()
    for step in range(1, 6):
        time.sleep(0.002)
        clock.mark(step)
        clock.mark(step)  # an accumulation micro-step reports the same global step: ignored
    s = clock.summary()
    assert s["timed_steps"] == 3 and len(s["step_s"]) == 3 and len(s["cpu_step_s"]) == 3
    assert all(x >= 0.002 for x in s["step_s"])
    assert s["first_step_s"] >= 0.002
    assert s["mean_step_s"] == pytest.approx(sum(s["step_s"]) / 3, rel=1e-6)


def test_clock_without_timed_steps_says_so():
    clock = StepClock(warmup=3, total=6)
    clock.start()
    clock.mark(1)
    with pytest.raises(RuntimeError, match="ran 1 of 6"):
        clock.summary()
