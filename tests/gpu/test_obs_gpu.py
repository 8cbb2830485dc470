"""Observability on a real GPU with the real NVML (run by scripts/gpu_obs.sh; skipped without CUDA)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def matmul_loop(seconds: float, n: int = 8192) -> tuple[int, float]:
    """bf16 n x n matmuls for about `seconds`; returns (FLOPs, GPU seconds from CUDA events)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b  # warm-up (cuBLAS heuristics, clocks ramp up)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters, t0 = 0, time.perf_counter()
    start.record()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        iters += 10
        torch.cuda.synchronize()  # keep the host clock honest about the loop's length
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters, start.elapsed_time(end) / 1000


def test_real_nvml_sampler_sees_the_busy_gpu(tmp_path):
    from trainer.observability.sampler import SystemSampler

    sampler = SystemSampler(tmp_path / "sys.jsonl", interval_s=0.2, host="gpu-test")
    assert sampler.nvml.available, sampler.nvml.reason
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    index = sampler.nvml.index_of_uuid(uuid)
    assert index is not None, f"CUDA device 0 ({uuid}) not found among NVML devices"
    sampler.start()
    matmul_loop(2.5)
    sampler.stop()
    samples = [json.loads(x) for x in (tmp_path / "sys.jsonl").read_text().splitlines()]
    ours = [g for s in samples for g in s["gpus"] if g["index"] == index]
    assert len(ours) >= 5
    print("last NVML sample:", json.dumps(ours[-1]))
    assert max(g["util"] for g in ours) >= 50  # the matmul loop kept it busy
    assert all(0 < g["mem_used_gb"] <= g["mem_total_gb"] for g in ours)
    assert max(g["power_w"] for g in ours) > 50 and all(g["power_limit_w"] > 0 for g in ours)
    assert max(g["sm_clock_mhz"] for g in ours) > 500 and all(20 < g["temp_c"] < 110 for g in ours)
    assert all(isinstance(g["throttle"], list) for g in ours)


def test_mfu_of_a_bf16_matmul_loop_is_plausible():
    from trainer.observability.flops import mfu
    from trainer.observability.peaks import peak_for

    name = torch.cuda.get_device_name(0)
    peak = peak_for(name, "bf16")
    if peak.tflops is None:
        pytest.skip(f"no bf16 peak for {name}: {peak.source}")
    flops, seconds = matmul_loop(2.0)
    achieved = mfu(flops, 1 / seconds, peak.flops)  # one "sample" = the whole loop
    print(f"{name}: {flops / seconds / 1e12:.1f} TFLOP/s bf16 = MFU {100 * achieved:.1f}% of {peak.tflops} ({peak.source})")
    assert 0.25 < achieved < 1.0  # large bf16 GEMMs reach well over a quarter of the dense peak, never above it


def test_cuda_step_timing_is_read_lazily():
    from trainer.observability.timing import CudaClock, StepTimer

    timer = StepTimer(CudaClock(torch.device("cuda")))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    timer.batch_start(batch_idx=0, samples=1, tokens=None)
    timer.before_backward()
    for _ in range(50):
        a @ a  # ~100+ ms of GPU work queued
    timer.after_backward()
    timer.batch_end(step=1)
    t = time.perf_counter()
    assert timer.poll() == []  # not finished yet, and poll does not wait for it
    assert time.perf_counter() - t < 0.01
    (st,) = timer.poll(final=True)
    assert st.backward > 0.01 and st.forward >= 0


def test_perf_monitor_in_a_gpu_training_run(tmp_path):
    import csv

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from trainer.models.gpt import GPT, GPTConfig
    from trainer.module import TrainModule
    from trainer.observability import PerfMonitor
    from trainer.report import build_report

    run_dir = Path(os.environ.get("OBS_GPU_ARTIFACTS", tmp_path)) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    seq = 512
    net = GPT(GPTConfig(vocab_size=256, seq_len=seq, d_model=512, n_layers=8, n_heads=8))
    module = TrainModule(net, lr=3e-4, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8, warmup_steps=5,
                         schedule="cosine", min_lr_ratio=0.1, max_steps=60)
    tokens = torch.randint(0, 256, (64 * 16, seq + 1))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=16, shuffle=True)
    monitor = PerfMonitor(run_dir / "perf", net.flops_per_token(), seq, log_every_n_steps=10, nvml_interval_s=0.2,
                          verdict_every_n_steps=30, straggler_every_n_steps=10)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=60, callbacks=[monitor],
                         logger=pl.loggers.CSVLogger(run_dir, name="csv", version=""), log_every_n_steps=10,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, loader)
    records = [json.loads(x) for x in (run_dir / "perf" / "rank0.jsonl").read_text().splitlines()]
    meta, steps = records[0], [r for r in records if r["kind"] == "step"]
    mem = [r for r in records if r["kind"] == "mem"]
    assert mem and mem[-1]["peak_allocated_gb"] > 0 and mem[-1]["peak_reserved_gb"] >= mem[-1]["peak_allocated_gb"]
    assert meta["device"].startswith("cuda") and meta["gpu_index"] is not None and meta["dtype"] == "bf16"
    assert len(steps) == 60 and all(s["forward"] > 0 and s["backward"] > 0 for s in steps[1:])
    v = monitor.final_verdict
    print("verdict:", v.headline, json.dumps(v.numbers))
    if meta["peak_tflops"]:
        assert 0.0 < v.numbers["mfu"] < 1.0
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    host, idx = meta["host"], meta["gpu_index"]
    assert any(r.get(f"gpu/{host}/{idx}/util") for r in rows) and any(r.get("perf/mem/peak_allocated_gb") for r in rows)
    page = build_report(run_dir).read_text()
    assert "gpu.png" in page
