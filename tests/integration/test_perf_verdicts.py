"""Real CPU runs through the CLI, made input-bound, compute-bound and straggler-bound on purpose:
the perf verdict must name each correctly; the report renders from the run dir alone."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.slow

QUIET = ["logger.wandb=false", "trainer.progress_bar=false", "trainer.val_every_steps=1000",
         "checkpoint.every_n_steps=1000", "checkpoint.save_final=false", "trainer.log_every_steps=4",
         "observability.nvml_interval_s=0.2", "observability.warmup_steps=2", "observability.verdict_every_n_steps=6",
         "observability.straggler_every_n_steps=3",
         "trainer.num_threads=1"]  # two torch threads on a loaded 2-core machine would thrash, blurring the timings
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=64", "data.batch_size=4"]


def train(run_dir: Path, cache: Path, *overrides: str) -> dict:
    r = cli("trainer.train", f"run.dir={run_dir}", f"paths.cache_dir={cache}", *QUIET, *overrides, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    verdict = json.loads((run_dir / "perf" / "verdict.json").read_text())
    assert verdict["final"]
    return {"verdict": verdict["verdict"], "stdout": r.stdout + r.stderr}


def test_slow_data_is_input_bound(tmp_path, shared_cache):
    out = train(tmp_path / "run", shared_cache, "debug=slow_data", "data.batch_delay_s=0.4", "trainer.max_steps=8", *TINY)
    v = out["verdict"]
    assert v["bottleneck"] == "input-bound", v
    assert v["numbers"]["frac_data"] > 0.5 and "data.num_workers" in v["fix"]
    assert "Performance verdict" in out["stdout"] and "input-bound" in out["stdout"]
    assert "perf step 4:" in out["stdout"]  # the one-line summary at the log interval


def test_default_model_shape_is_compute_bound(tmp_path, shared_cache):
    out = train(tmp_path / "run", shared_cache, "trainer.max_steps=10", "model.d_model=128", "model.n_layers=2",
                "model.n_heads=4", "model.seq_len=128", "data.batch_size=8", "observability.peak_tflops=0.5")
    v = out["verdict"]
    assert v["bottleneck"] == "compute-bound", v
    assert 0 < v["numbers"]["mfu"] < 1 and "MFU" in v["evidence"]
    records = [json.loads(x) for x in (tmp_path / "run" / "perf" / "rank0.jsonl").read_text().splitlines()]
    assert records[0]["flops_per_token"] > 0 and records[0]["tokens_per_sample"] == 128


def test_delayed_rank_is_named_straggler_and_report_renders(tmp_path, shared_cache):
    run = tmp_path / "run"
    out = train(run, shared_cache, "trainer.devices=2", "strategy=ddp", "debug=straggler", "debug.straggler_delay_s=0.4",
                "trainer.max_steps=12", *TINY)
    v = out["verdict"]
    assert v["bottleneck"] == "straggler" and v["straggler_rank"] == 1, v
    busy = v["numbers"]["busy_s_per_rank"]
    assert busy[1] > busy[0] + 0.25  # rank 1's own work includes its 0.4 s delay
    meta = [json.loads((run / "perf" / f"rank{k}.jsonl").read_text().splitlines()[0]) for k in (0, 1)]
    assert all(m["comm_separated"] for m in meta)
    rank0_steps = [json.loads(x) for x in (run / "perf" / "rank0.jsonl").read_text().splitlines()[1:]]
    waits = sorted(r["comm"] for r in rank0_steps if r["comm"] is not None)
    assert waits and waits[len(waits) // 2] > 0.2  # rank 0 waits for rank 1 in the all-reduce
    stragglers = [json.loads(x) for x in (run / "perf" / "stragglers.jsonl").read_text().splitlines()]
    assert stragglers and stragglers[-1]["stragglers"][0][0] == 1

    r = cli("trainer.report", f"run.dir={run}")
    assert r.returncode == 0, r.stderr
    report = run / "report"
    page = (report / "index.html").read_text()
    for png in ("loss.png", "throughput.png", "phases.png", "stragglers.png", "system.png"):
        assert (report / png).stat().st_size > 5000 and f"src='{png}'" in page
    assert "straggler rank 1" in page and "http" not in page.replace("https://ui.perfetto.dev", "")  # offline
    render_in_chromium(report / "index.html", tmp_path)


def render_in_chromium(index: Path, tmp: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([*base, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "id=\"verdict\"" in dom and "straggler rank 1" in dom and dom.count("<img") >= 5
    shot = tmp / "page.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1100,2400", index.as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(shot)[..., :3].reshape(-1, 3)
    colours = np.unique((pixels * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200, "the page rendered without its charts"
