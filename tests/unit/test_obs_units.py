"""Pure logic of the observability parts: peaks, step-phase arithmetic, summaries, verdict rules."""
from __future__ import annotations

import pytest

from trainer.errors import UserError
from trainer.config import ObservabilityConfig
from trainer.observability import PerfMonitor
from trainer.observability.peaks import PEAK_TFLOPS, compute_dtype, device_key, peak_for
from trainer.observability.stats import gpu_health, median, summarize
from trainer.observability.timing import StepTimer
from trainer.observability.verdict import (
    COMM, COMPUTE, INPUT, MEMORY, NONE, STRAGGLER, THROTTLE, Evidence, GpuHealth, Thresholds, decide, stragglers,
)


# ---------------------------------------------------------------- peaks
@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L40S", "L40S"), ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA A10", "A10"), ("Tesla T4", "T4"), ("Tesla V100-SXM2-16GB", "V100 SXM2"),
])
def test_device_names_map_to_the_peak_table(name, key):
    assert device_key(name) == key


def test_required_devices_have_all_four_dense_dtypes():
    for key in ("H100 SXM", "H100 PCIe", "H200 SXM", "A100", "L40S", "L4", "A10G"):
        assert set(PEAK_TFLOPS[key]) >= {"bf16", "fp16", "tf32", "fp32"}, key
    # dense, not the datasheet's sparsity figure
    assert peak_for("NVIDIA H100 80GB HBM3", "bf16").tflops == pytest.approx(989.4)
    assert peak_for("NVIDIA A100-SXM4-80GB", "tf32").tflops == pytest.approx(156.0)


def test_unknown_device_says_so_and_override_wins():
    p = peak_for("cpu", "fp32")
    assert p.tflops is None and p.flops is None and "observability.peak_tflops" in p.source
    assert peak_for("Mystery GPU 9000", "bf16").tflops is None
    assert peak_for("Tesla T4", "bf16").tflops is None  # no bf16 tensor cores: no guess
    o = peak_for("cpu", "fp32", override_tflops=2.5)
    assert o.flops == 2.5e12 and o.source == "observability.peak_tflops"


def test_compute_dtype_from_lightning_precision():
    assert compute_dtype("bf16-mixed") == "bf16"
    assert compute_dtype("bf16-true") == "bf16"
    assert compute_dtype("16-mixed") == "fp16"
    assert compute_dtype("32-true") == "fp32"
    assert compute_dtype("32-true", tf32_enabled=True) == "tf32"


# ---------------------------------------------------------------- config
def test_monitor_rejects_bad_observability_settings():
    with pytest.raises(UserError, match="straggler_margn"):
        PerfMonitor(None, straggler_margn=0.1)
    with pytest.raises(UserError, match="observability.nvml_interval_s"):
        PerfMonitor(None, nvml_interval_s=0)
    with pytest.raises(UserError, match="observability.peak_tflops"):
        PerfMonitor(None, peak_tflops=-1.0)
    assert PerfMonitor(None, **vars(ObservabilityConfig())).cfg == ObservabilityConfig()


# ---------------------------------------------------------------- timing
class ManualClock:
    """Marks are numbers the test sets; `ready` follows a watermark, as CUDA events complete later."""

    synchronous = False

    def __init__(self):
        self.now = 0.0
        self.done_until = float("inf")
        self.flushed = False

    def mark(self):
        return self.now

    def ready(self, m):
        return m <= self.done_until

    def seconds(self, a, b):
        return b - a

    def flush(self):
        self.flushed = True
        self.done_until = float("inf")


def run_batch(timer, clock, step, data, fwd, bwd, opt, comm_buckets=()):
    clock.now += data
    timer.batch_start(batch_idx=step, samples=4, tokens=64)
    clock.now += fwd
    timer.before_backward()
    t0 = clock.now
    for launch, done in comm_buckets:
        timer.comm_bucket(t0 + launch, t0 + done)
    clock.now += bwd
    timer.after_backward()
    clock.now += opt
    timer.batch_end(step)


def test_phases_add_up_and_exposed_comm_leaves_backward():
    clock = ManualClock()
    timer = StepTimer(clock)
    run_batch(timer, clock, 1, 0.5, 1.0, 2.0, 0.5)
    # buckets handed over at 0.5 s and 1.5 s into backward; the last finishes at 2.0 s: 0.5 s exposed
    run_batch(timer, clock, 2, 0.25, 1.0, 2.0, 0.5, comm_buckets=[(0.5, 1.2), (1.5, 2.0)])
    first, second = timer.poll()
    assert first.step_s is None and first.data is None  # nothing before the first batch to compare with
    assert second.step_s == pytest.approx(3.75)
    assert (second.data, second.forward, second.comm, second.backward, second.optimizer) == pytest.approx(
        (0.25, 1.0, 0.5, 1.5, 0.5))
    assert second.data + second.forward + second.backward + second.comm + second.optimizer == pytest.approx(second.step_s)
    assert second.busy_s == pytest.approx(3.25)
    assert second.as_record()["comm"] == pytest.approx(0.5)


def test_interrupted_gap_is_not_counted_as_data_wait():
    clock = ManualClock()
    timer = StepTimer(clock)
    run_batch(timer, clock, 1, 0.0, 1, 1, 1)
    timer.interrupt()  # validation runs here
    run_batch(timer, clock, 2, 30.0, 1, 1, 1)
    run_batch(timer, clock, 3, 0.1, 1, 1, 1)
    _, after_val, normal = timer.poll()
    assert after_val.data is None and after_val.step_s is None and after_val.compute_s == pytest.approx(3)
    assert normal.data == pytest.approx(0.1)


def test_unfinished_device_work_is_read_later_in_order():
    clock = ManualClock()
    timer = StepTimer(clock)
    run_batch(timer, clock, 1, 0, 1, 1, 1)
    clock.done_until = clock.now  # the device has finished batch 1 only
    run_batch(timer, clock, 2, 0, 1, 1, 1)
    run_batch(timer, clock, 3, 0, 1, 1, 1)
    assert [s.step for s in timer.poll()] == [1]
    assert timer.poll() == []  # never blocks
    assert [s.step for s in timer.poll(final=True)] == [2, 3] and clock.flushed


def test_summary_fractions_and_throughput():
    clock = ManualClock()
    timer = StepTimer(clock)
    for step in range(1, 6):
        run_batch(timer, clock, step, 1.0, 1.0, 1.5, 0.5)
    s = summarize(timer.poll())
    assert s.steps == 4 and s.step_s == pytest.approx(4.0)
    assert s.fractions["data"] == pytest.approx(0.25) and s.fractions["backward"] == pytest.approx(0.375)
    assert s.fractions["comm"] is None
    assert s.tokens_per_s == pytest.approx(16.0) and s.samples_per_s == pytest.approx(1.0)
    assert median([3.0, None, 1.0, 2.0]) == 2.0 and median([]) is None


# ---------------------------------------------------------------- verdict rules
def evidence(**kw):
    base = dict(step=100, world_size=1, measured_steps=50, step_s=0.1,
                fractions={"data": 0.02, "forward": 0.3, "backward": 0.55, "comm": None, "optimizer": 0.1})
    base.update(kw)
    return Evidence(**base)


def frac(data=0.02, fwd=0.3, bwd=0.55, comm=None, opt=0.1):
    return {"data": data, "forward": fwd, "backward": bwd, "comm": comm, "optimizer": opt}


def test_compute_bound_reports_mfu():
    v = decide(evidence(mfu=0.41, device="cuda"), Thresholds())
    assert v.bottleneck == COMPUTE and "MFU 41%" in v.evidence and "GPU" in v.fix


def test_compute_bound_on_a_cpu_advises_only_what_was_measured_to_help_there():
    """benchmarks/cpu_advice.py: bf16 0.79x and compile 0.81x CPU time per step (native-bf16 CPU), kernels=fused 0.96x."""
    v = decide(evidence(device="cpu", precision="32-true", compiled=False, cpu_native_bf16=True), Thresholds())
    assert "bf16-mixed" in v.fix and "trainer.compile=true" in v.fix and "kernels=fused" not in v.fix
    no_bf16 = decide(evidence(device="cpu", precision="32-true", compiled=False, cpu_native_bf16=False), Thresholds())
    assert "bf16" not in no_bf16.fix and "trainer.compile=true" in no_bf16.fix  # emulated bf16 is not advised
    done = decide(evidence(device="cpu", precision="bf16-mixed", compiled=True, cpu_native_bf16=True), Thresholds())
    assert "bf16" not in done.fix and "compile" not in done.fix  # what the run already does is not advised
    gpu = decide(evidence(device="cuda", precision="bf16-mixed", compiled=False), Thresholds())
    assert "bf16" not in gpu.fix and "trainer.compile=true" in gpu.fix and "more devices" in gpu.fix
    # never kernels=fused: it forces kernels measured slower than compile; auto already picks per op
    assert "kernels" not in gpu.fix
    assert "kernels" not in decide(evidence(device="cuda", precision="32-true", compiled=True), Thresholds()).fix


def test_input_bound_names_the_wait_and_the_fix():
    v = decide(evidence(fractions=frac(data=0.62, fwd=0.1, bwd=0.2, opt=0.05), num_workers=0), Thresholds())
    assert v.bottleneck == INPUT
    assert "waits 62% of each step" in v.evidence and "data.num_workers (now 0)" in v.fix and "pre-tokenize" in v.fix


def test_communication_bound():
    v = decide(evidence(world_size=2, busy_s=[0.1, 0.1], fractions=frac(comm=0.4, fwd=0.2, bwd=0.3)), Thresholds())
    assert v.bottleneck == COMM and "40%" in v.evidence


def test_straggler_comes_before_the_waits_it_causes():
    # rank 0 waits in the all-reduce for rank 1: comm looks high, but rank 1 is the cause
    v = decide(evidence(world_size=2, busy_s=[0.10, 0.16], fractions=frac(comm=0.35)), Thresholds())
    assert v.bottleneck == STRAGGLER and v.straggler_rank == 1
    assert v.headline.startswith("straggler rank 1:") and "60% slower" in v.evidence


def test_straggler_detection_uses_the_other_ranks_median():
    assert stragglers([1.0, 1.0, 1.05, 1.0], margin=0.2) == []
    assert [r for r, _ in stragglers([1.0, 1.0, 1.0, 1.5], margin=0.2)] == [3]
    (rank, slowdown), = stragglers([1.0, 1.3], margin=0.2)
    assert rank == 1 and slowdown == pytest.approx(0.3)
    assert stragglers([1.0, None, 1.0], margin=0.2) == []


def test_memory_pressure_from_capacity_or_allocator_retries():
    assert decide(evidence(mem_frac=0.97), Thresholds()).bottleneck == MEMORY
    assert decide(evidence(mem_frac=0.5, alloc_retries=3), Thresholds()).bottleneck == MEMORY
    assert decide(evidence(mem_frac=0.5), Thresholds()).bottleneck == COMPUTE


def test_throttling_verdict_names_the_gpu_and_reason():
    g = GpuHealth("node0 GPU 3", thermal_fraction=0.6, power_fraction=0.0, sm_clock_mhz=1200,
                  sm_clock_max_mhz=1980, temp_c=91, reasons=["hw_thermal"])
    v = decide(evidence(gpu=g, mfu=0.2, device="cuda"), Thresholds())
    assert v.bottleneck == THROTTLE
    assert "GPU 3" in v.evidence and "thermal" in v.evidence and "1200/1980 MHz" in v.evidence


def test_no_clear_bottleneck():
    v = decide(evidence(fractions=frac(data=0.1, fwd=0.2, bwd=0.3, opt=0.05)), Thresholds())
    assert v.bottleneck == NONE and "no phase dominates" in v.evidence
    assert [f.rule for f in v.findings] == [STRAGGLER, INPUT, COMM, MEMORY, THROTTLE, COMPUTE]
    assert not any(f.fired for f in v.findings)


def test_gpu_health_picks_the_worst_gpu():
    samples = [{"t": t, "gpus": [
        {"index": 0, "throttle": [], "sm_clock_mhz": 1980.0, "sm_clock_max_mhz": 1980.0, "temp_c": 60.0},
        {"index": 1, "throttle": ["sw_power_cap"] if t % 2 else [], "sm_clock_mhz": 1500.0, "temp_c": 70.0},
    ]} for t in range(10)]
    h = gpu_health(samples, "n0")
    assert h.where == "n0 GPU 1" and h.power_fraction == pytest.approx(0.5) and h.thermal_fraction == 0.0
    assert h.reasons == ["sw_power_cap"]
    assert gpu_health([{"t": 0, "sys": {}}], "n0") is None


# ---------------------------------------------------------------- report CLI errors
def test_report_cli_rejects_bad_arguments_with_exit_2(tmp_path, capsys):
    from trainer.report import main

    for argv, needle in ([[], "usage"], [[f"run.dir={tmp_path / 'nope'}"], "is not a directory"],
                         [[f"run.dir={tmp_path}"], "has no perf/"], [["--bogus"], "unknown argument"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert needle in capsys.readouterr().err
