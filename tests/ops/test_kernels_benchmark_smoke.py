"""benchmarks/kernels.py runs end to end (tiny shapes on the C++ CPU paths): the GPU slot's
benchmark step must not be the first run of the script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.extended  # a benchmark smoke run, outside the default suite
def test_benchmark_script_smoke(kernels_loaded, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--no-compile", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "kernels_bench.json").read_text())
    ops_run = [row["op"] for row in report["results"]]
    # the ops with a goal of their own first: a time budget cuts the ops at the end
    assert ops_run == ["rms_norm", "fused_linear_ce", "rope", "swiglu", "cross_entropy"] + ["fused_linear_ce_chunks"] * 3
    rows = report["results"]
    assert all(row["error"] is None for row in rows), rows
    assert all(row["fwd_ms"]["fused"] > 0 and row["fwd_bwd_ms"]["fused"] > 0 for row in rows)  # both passes, every op
    assert all(row["fwd_bwd_ms"]["eager"] > 0 and row["speedup_eager"] > 0 for row in rows[:5])
    # the linear CE's forward also does the backward: no forward-alone comparison for it
    assert all((row["fwd_speedup_eager"] is None) == (row["op"] == "fused_linear_ce") for row in rows[:5])
    assert all(row["fwd_speedup_eager"] > 0 for row in rows[:5] if row["op"] != "fused_linear_ce")
    for key in ("device", "torch", "date_utc", "dtype", "sources", "capability", "driver"):
        assert key in report, key
    assert "| rms_norm | 64x96 bf16 | bfloat16 |" in (tmp_path / "kernels_bench.md").read_text()
    assert "| op | shape |" in r.stdout  # the table is printed, goals after it
    candidate = json.loads((tmp_path / "auto_table_candidate.json").read_text())
    assert candidate["device"]["name"] == "cpu (smoke)" and candidate["sources"] == report["sources"]
    assert set(candidate["ops"]) == {"rms_norm", "apply_rotary", "swiglu", "cross_entropy", "fused_linear_cross_entropy"}
    assert set(candidate["ops"]["rms_norm"]["eager"]) == {"fwd", "fwd_bwd", "shapes"}


@pytest.mark.slow  # two torch.compile runs on the CPU (~1 min)
@pytest.mark.extended
def test_the_linear_ce_goal_is_against_the_faster_compiled_alternative(kernels_loaded, tmp_path):
    """Issue 16's goal for the fused linear CE was set against torch.compile of the plain linear + CE;
    auto's alternative is the chunked reference. Both are timed compiled, and the goal takes the faster."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--only", "fused_linear_ce", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "kernels_bench.json").read_text())
    [row] = report["results"]
    ms = row["fwd_bwd_ms"]
    assert set(ms) == {"fused", "eager", "compile", "compile_unfused"}, ms
    assert row["speedup_compile_unfused"] == pytest.approx(ms["compile_unfused"] / ms["fused"])
    assert row["speedup_best_compile"] == pytest.approx(min(ms["compile"], ms["compile_unfused"]) / ms["fused"])
    [goal] = [g for g in report["goals"] if "vs torch.compile" in g or "torch.compile alternative" in g]
    assert "vs the faster torch.compile alternative" in goal and "vs the compiled unfused linear + CE" in goal
    assert f"x{row['speedup_best_compile']:.2f} vs the faster" in goal
