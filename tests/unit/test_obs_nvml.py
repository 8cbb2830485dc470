"""NVML sampling and the NVML-driven verdicts, with a fake `pynvml` module (no GPU on CI).

The fake sits exactly at the pynvml boundary: the real constants and error classes of
nvidia-ml-py, and the functions our reader calls, answering from a table the test controls.
"""
from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pynvml as real_nvml
import pytest

from trainer.observability.nvml import NvmlReader
from trainer.observability.sampler import SystemSampler
from trainer.observability.stats import gpu_health, gpu_memory_fraction
from trainer.observability.verdict import MEMORY, THROTTLE, Evidence, Thresholds, decide

GB = 1024**3


def make_fake_pynvml(gpus: list[dict], unsupported: set[str] = frozenset()) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    for name in dir(real_nvml):
        if name.startswith(("NVML_", "nvmlClocks", "NVMLError")):
            setattr(nv, name, getattr(real_nvml, name))
    nv.calls = {"init": 0, "pcie": 0}

    def guard(what):
        if what in unsupported:
            raise real_nvml.NVMLError(real_nvml.NVML_ERROR_NOT_SUPPORTED)

    def init():
        nv.calls["init"] += 1

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: len(gpus)
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: gpus[h]["name"]
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=gpus[h]["util"], memory=30)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=gpus[h]["mem_used"], total=gpus[h]["mem_total"],
                                                                 free=gpus[h]["mem_total"] - gpus[h]["mem_used"])
    nv.nvmlDeviceGetPowerUsage = lambda h: gpus[h]["power_mw"]
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetClockInfo = lambda h, kind: gpus[h]["sm_clock"] if kind == nv.NVML_CLOCK_SM else 2619
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    nv.nvmlDeviceGetTemperature = lambda h, sensor: gpus[h]["temp"]
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: gpus[h]["reasons"]

    def pcie(h, counter):
        guard("pcie")
        nv.calls["pcie"] += 1
        return 1_000_000 if counter == nv.NVML_PCIE_UTIL_TX_BYTES else 2_000_000  # KB/s

    nv.nvmlDeviceGetPcieThroughput = pcie

    def field_values(h, ids):
        guard("nvlink")
        gpus[h]["nvlink_kib"] = gpus[h].get("nvlink_kib", 0) + 1_000_000
        value = types.SimpleNamespace(ullVal=gpus[h]["nvlink_kib"])
        return [types.SimpleNamespace(nvmlReturn=0, value=value) for _ in ids]

    nv.nvmlDeviceGetFieldValues = field_values
    return nv


def gpu(**kw):
    g = dict(name="NVIDIA H100 80GB HBM3", util=97, mem_used=40 * GB, mem_total=80 * GB, power_mw=650_000,
             sm_clock=1980, temp=65, reasons=0)
    g.update(kw)
    return g


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(gpus, unsupported=frozenset()):
        nv = make_fake_pynvml(gpus, set(unsupported))
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv
    return install


def test_reader_reads_every_field_of_every_gpu(fake_nvml):
    fake_nvml([gpu(), gpu(reasons=real_nvml.nvmlClocksEventReasonHwThermalSlowdown | real_nvml.nvmlClocksEventReasonGpuIdle)])
    r = NvmlReader()
    assert r.available and r.count == 2 and r.index_of_uuid("GPU-0001") == 1
    first = r.read(now=100.0)
    second = r.read(now=101.0)
    g0, g1 = second
    assert g0["util"] == 97 and g0["mem_used_gb"] == pytest.approx(40) and g0["mem_total_gb"] == pytest.approx(80)
    assert g0["power_w"] == 650 and g0["power_limit_w"] == 700 and g0["sm_clock_mhz"] == 1980
    assert g0["sm_clock_max_mhz"] == 1980 and g0["mem_clock_mhz"] == 2619 and g0["temp_c"] == 65
    assert g0["throttle"] == [] and g1["throttle"] == ["hw_thermal"]  # idle is not a slowdown
    assert g0["pcie_tx_mbs"] == 1000 and g0["pcie_rx_mbs"] == 2000
    assert "nvlink_tx_mbs" not in first[0]  # a rate needs two readings
    assert g0["nvlink_tx_mbs"] == pytest.approx(1024.0)  # 1e6 KiB in 1 s


def test_unsupported_fields_are_dropped_after_one_try(fake_nvml):
    nv = fake_nvml([gpu()], unsupported={"pcie", "nvlink"})
    r = NvmlReader()
    for t in range(3):
        g, = r.read(now=float(t))
    assert "pcie_tx_mbs" not in g and "nvlink_tx_mbs" not in g and g["util"] == 97
    assert nv.calls["pcie"] == 0


def test_without_nvml_the_sampler_says_so_once_and_samples_the_host(monkeypatch, tmp_path, caplog):
    def broken_init():
        raise real_nvml.NVMLError(real_nvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    nv = make_fake_pynvml([])
    nv.nvmlInit = broken_init
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    path = tmp_path / "perf" / "sys_h.jsonl"
    with caplog.at_level(logging.WARNING):
        sampler = SystemSampler(path, interval_s=0.05, host="h").start()
        import time
        time.sleep(0.4)
        sampler.stop()
    warnings = [r for r in caplog.records if "GPU metrics off" in r.getMessage()]
    assert len(warnings) == 1 and "NVML" in warnings[0].getMessage()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) >= 3 and all("gpus" not in x for x in lines)
    assert lines[-1]["sys"]["rss_gb"] > 0 and lines[-1]["sys"]["host_mem_total_gb"] > 0


def test_sampler_thread_writes_gpu_samples(fake_nvml, tmp_path):
    fake_nvml([gpu(), gpu(temp=70)])
    path = tmp_path / "sys_h.jsonl"
    sampler = SystemSampler(path, interval_s=0.05, host="h").start()
    import time
    time.sleep(0.3)
    sampler.stop()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) >= 2 and [g["temp_c"] for g in lines[-1]["gpus"]] == [65, 70]
    assert len(sampler.recent()) == len(lines)


def sample_window(fake_nvml, gpus, n=10):
    fake_nvml(gpus)
    sampler = SystemSampler(None, interval_s=1.0, host="node7")
    samples = [sampler.sample_once() for _ in range(n)]
    sampler.stop()
    return samples


def test_throttling_verdict_from_nvml_samples(fake_nvml):
    hot = gpu(sm_clock=1305, temp=89, reasons=real_nvml.nvmlClocksEventReasonSwThermalSlowdown)
    samples = sample_window(fake_nvml, [gpu(), hot])
    health = gpu_health(samples, "node7")
    ev = Evidence(step=10, world_size=1, measured_steps=10, step_s=0.1, device="cuda", mfu=0.3, gpu=health,
                  fractions={"data": 0.01, "forward": 0.3, "backward": 0.6, "comm": None, "optimizer": 0.05})
    v = decide(ev, Thresholds())
    assert v.bottleneck == THROTTLE
    assert "node7 GPU 1" in v.evidence and "sw_thermal" in v.evidence and "1305/1980 MHz" in v.evidence


def test_power_cap_counts_as_throttling_but_idle_does_not(fake_nvml):
    capped = sample_window(fake_nvml, [gpu(reasons=real_nvml.nvmlClocksEventReasonSwPowerCap)])
    idle = sample_window(fake_nvml, [gpu(reasons=real_nvml.nvmlClocksEventReasonGpuIdle)])
    assert gpu_health(capped, "n").power_fraction == 1.0
    assert gpu_health(idle, "n").power_fraction == 0.0 and gpu_health(idle, "n").thermal_fraction == 0.0


def test_memory_pressure_verdict_from_nvml_memory(fake_nvml):
    samples = sample_window(fake_nvml, [gpu(mem_used=79 * GB)])
    frac = gpu_memory_fraction(samples, 0)
    assert frac == pytest.approx(79 / 80)
    ev = Evidence(step=10, world_size=1, measured_steps=10, step_s=0.1, device="cuda", mem_frac=frac,
                  fractions={"data": 0.01, "forward": 0.3, "backward": 0.6, "comm": None, "optimizer": 0.05})
    v = decide(ev, Thresholds())
    assert v.bottleneck == MEMORY and "99%" in v.evidence


def test_a_real_cpu_run_reports_nvml_gpus_and_their_throttling(fake_nvml, tmp_path):
    """The whole path: the monitor's sampler thread reads (fake) NVML during a real run, logs
    gpu/<host>/<i>/… metrics and the verdict names the throttled GPU."""
    import csv

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainer.observability import PerfMonitor

    fake_nvml([gpu(), gpu(sm_clock=1100, temp=92, reasons=real_nvml.nvmlClocksEventReasonHwThermalSlowdown)])

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            time.sleep(0.01)  # long enough steps for several NVML samples
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    import time
    data = TensorDataset(torch.randn(512, 64), torch.randn(512, 1))
    monitor = PerfMonitor(tmp_path / "perf", log_every_n_steps=5, verdict_every_n_steps=100, nvml_interval_s=0.02, warmup_steps=1)
    trainer = pl.Trainer(max_steps=15, accelerator="cpu", callbacks=[monitor], logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=""),
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Regression(), DataLoader(data, batch_size=16))
    v = monitor.final_verdict
    assert v.bottleneck == THROTTLE and f"{monitor.host} GPU 1" in v.evidence and "hw_thermal" in v.evidence
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    temps = [float(r[f"gpu/{monitor.host}/1/temp_c"]) for r in rows if r.get(f"gpu/{monitor.host}/1/temp_c")]
    assert temps and set(temps) == {92.0}
    assert any(r.get(f"gpu/{monitor.host}/1/throttled") == "1.0" for r in rows)
    samples = [json.loads(x) for x in (tmp_path / "perf" / f"sys_{monitor.host}.jsonl").read_text().splitlines()]
    assert all(len(s["gpus"]) == 2 for s in samples)

    from trainer.report import build_report

    page = build_report(tmp_path).read_text()
    assert "src='gpu.png'" in page and (tmp_path / "report" / "gpu.png").stat().st_size > 5000
    assert "thermal/power throttling" in page
