"""PerfMonitor in real (tiny, CPU) Lightning runs, and the FLOP count behind MFU."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.models.gpt import GPT, GPTConfig
from trainer.observability import PerfMonitor
from trainer.observability.flops import count_train_flops, measure_train_flops_per_sample
from trainer.observability.verdict import COMPUTE, INPUT

SEQ = 32


class Tokens(Dataset):
    def __init__(self, n: int, delay_s: float = 0.0):
        self.n, self.delay_s = n, delay_s

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        x = torch.randint(0, 256, (SEQ + 1,), generator=torch.Generator().manual_seed(i))
        return x[:-1], x[1:]


class TinyLM(pl.LightningModule):
    def __init__(self, d_model=64):
        super().__init__()
        self.net = GPT(GPTConfig(vocab_size=256, seq_len=SEQ, d_model=d_model, n_layers=2, n_heads=4))

    def training_step(self, batch, batch_idx):
        loss = self.net(*batch)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def fit(tmp_path: Path, steps: int = 16, delay_s: float = 0.0, flops=True, d_model=64, batch_size=8, **obs) -> PerfMonitor:
    torch.manual_seed(0)
    module = TinyLM(d_model)
    monitor = PerfMonitor(tmp_path / "perf", module.net.flops_per_token() if flops else None, SEQ if flops else None,
                          log_every_n_steps=4, verdict_every_n_steps=8, straggler_every_n_steps=4,
                          nvml_interval_s=0.05, warmup_steps=2, **obs)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", callbacks=[monitor], logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=""),
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         log_every_n_steps=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier timings on a shared machine
    try:
        trainer.fit(module, DataLoader(Tokens(10_000, delay_s), batch_size=batch_size))
    finally:
        torch.set_num_threads(threads)
    return monitor


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_compute_bound_run_writes_records_metrics_and_verdict(tmp_path):
    monitor = fit(tmp_path, peak_tflops=0.5)
    records = read_jsonl(tmp_path / "perf" / "rank0.jsonl")
    meta, steps = records[0], records[1:]
    assert meta["kind"] == "meta" and meta["peak_tflops"] == 0.5 and meta["world_size"] == 1
    assert [r["step"] for r in steps] == list(range(1, 17))
    for r in steps[1:]:
        parts = r["data"] + r["forward"] + r["backward"] + r["optimizer"]
        assert parts == pytest.approx(r["step_s"], rel=1e-3) and r["tokens"] == 8 * SEQ
    verdict = json.loads((tmp_path / "perf" / "verdict.json").read_text())
    assert verdict["final"] and verdict["verdict"]["bottleneck"] == COMPUTE and len(verdict["history"]) == 2
    assert monitor.final_verdict.bottleneck == COMPUTE and "MFU" in monitor.final_verdict.evidence
    # metrics reach the logger on the loss's step axis
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    logged = [r for r in rows if r.get("perf/tokens_per_s")]
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in logged] == loss_steps == [3, 7, 11, 15]  # the loss's own step axis
    assert float(logged[-1]["perf/mfu"]) > 0 and float(logged[-1]["perf/frac/backward"]) > 0.1
    assert any(r.get(f"sys/{monitor.host}/rss_gb") for r in rows)
    assert (tmp_path / "perf" / f"sys_{monitor.host}.jsonl").stat().st_size > 0

    # the report is built from the run dir alone
    from trainer.report import build_report

    index = build_report(tmp_path)
    page = index.read_text()
    assert "compute-bound" in page and "MFU" in page
    for png in ("loss.png", "throughput.png", "phases.png", "system.png"):
        assert (index.parent / png).stat().st_size > 5000 and f"src='{png}'" in page


def test_slow_dataset_is_input_bound(tmp_path):
    # 2 samples x 100 ms of loading per batch vs a few ms of compute (tens under a loaded machine)
    monitor = fit(tmp_path, steps=10, delay_s=0.1, batch_size=2)
    v = monitor.final_verdict
    assert v.bottleneck == INPUT and "data.num_workers (now 0)" in v.fix
    assert v.numbers["frac_data"] >= 0.2  # the rule's threshold (observability.input_bound_fraction)


def test_mfu_is_counted_when_the_model_has_no_formula(tmp_path):
    monitor = fit(tmp_path, steps=6, flops=False, peak_tflops=0.5)
    assert monitor.flops_per_sample is not None and "FlopCounterMode" in monitor.flops_note
    expected = TinyLM().net.flops_per_token() * SEQ
    assert monitor.flops_per_sample == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("cfg", [
    GPTConfig(vocab_size=256, seq_len=128, d_model=64, n_layers=2, n_heads=4),
    GPTConfig(seq_len=256, d_model=96, n_layers=3, n_heads=6, vocab_size=512),
    GPTConfig(vocab_size=256, seq_len=64, d_model=128, n_layers=2, n_heads=8, tie_embeddings=False),
])
def test_gpt_flops_per_token_matches_the_flop_counter(cfg):
    """The 6N + attention formula against torch's FlopCounterMode on the real model (within 5%)."""
    torch.manual_seed(0)
    model = GPT(cfg)
    B = 2
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len))
    counted = count_train_flops(model, idx, idx)
    assert model.flops_per_token() * B * cfg.seq_len == pytest.approx(counted, rel=0.05)
    per_sample, _ = measure_train_flops_per_sample(model, idx)
    assert per_sample == pytest.approx(model.flops_per_token() * cfg.seq_len, rel=0.05)


def test_torch_profiler_window_writes_trace_and_top_kernels(tmp_path):
    from trainer.observability import StepWindowProfiler

    from dataclasses import asdict

    from trainer.config import ProfilerConfig

    profiler = StepWindowProfiler(tmp_path / "profiler", **asdict(ProfilerConfig(start_step=3, num_steps=2, row_limit=10)))
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", callbacks=[profiler], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(TinyLM(), DataLoader(Tokens(1000), batch_size=4))
    trace = json.loads(profiler.trace_path.read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::mm" in n or "aten::addmm" in n for n in names)
    table = profiler.table_path.read_text()
    assert "steps 3..4" in table and "Self CPU" in table and profiler.trace_path.name == "trace_rank0.json"


def test_observability_config_groups_compose_and_validate():
    from trainer.config import compose_config
    from trainer.errors import UserError

    cfg = compose_config(["profiler=torch", "debug=slow_data"])
    assert cfg.profiler.num_steps == 3 and cfg.data.batch_delay_s > 0 and cfg.observability.enabled
    cfg = compose_config(["debug=straggler", "trainer.devices=2", "strategy=ddp"])
    assert cfg.debug.straggler_rank == 1
    with pytest.raises(UserError, match="debug.straggler_rank=1 is not a rank"):
        compose_config(["debug=straggler"])
    with pytest.raises(UserError, match="observability.straggler_margin"):
        compose_config(["observability.straggler_margin=-1"])
    with pytest.raises(UserError, match="observability.nvml_intervl_s"):
        compose_config(["observability.nvml_intervl_s=1"])

    # what the trainer builds from them
    from trainer.build import _observability_callbacks
    from trainer.tracking.run_dir import RunDir

    net = TinyLM().net
    built = lambda *ov: [type(c).__name__ for c in _observability_callbacks(compose_config(list(ov)), RunDir(Path("/unused")), net)]
    assert built() == ["PerfMonitor"]
    assert built("observability.enabled=false") == []
    assert built("profiler=torch", "debug=straggler", "trainer.devices=2", "strategy=ddp") == [
        "StragglerDelay", "PerfMonitor", "StepWindowProfiler"]
    cfg = compose_config(["observability.straggler_margin=0.5"])
    monitor = _observability_callbacks(cfg, RunDir(Path("/unused")), net)[0]
    assert monitor.cfg.straggler_margin == 0.5 and monitor.flops_per_token == net.flops_per_token()
    assert monitor.tokens_per_sample == cfg.data.seq_len and monitor.log_every_n_steps == cfg.trainer.log_every_steps
