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
def test_benchmark_script_smoke(kernels_loaded, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--no-compile", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "kernels_bench.json").read_text())
    ops_run = [row["op"] for row in report["results"]]
    assert ops_run == ["rms_norm", "rope", "swiglu", "cross_entropy", "fused_linear_ce"] + ["fused_linear_ce_chunks"] * 3
    rows = report["results"]
    assert all(row["error"] is None for row in rows), rows
    assert all(row["fwd_ms"]["fused"] > 0 and row["fwd_bwd_ms"]["fused"] > 0 for row in rows)  # both passes, every op
    assert all(row["fwd_bwd_ms"]["eager"] > 0 and row["speedup_eager"] > 0 for row in rows[:5])
    assert all(row["fwd_speedup_eager"] > 0 for row in rows[:4])  # the linear CE's forward also does the backward
    for key in ("device", "torch", "date_utc", "dtype", "sources", "capability", "driver"):
        assert key in report, key
    assert "| rms_norm | 64x96 bf16 | bfloat16 |" in (tmp_path / "kernels_bench.md").read_text()
    assert "| op | shape |" in r.stdout  # the table is printed, goals after it
    candidate = json.loads((tmp_path / "auto_table_candidate.json").read_text())
    assert candidate["device"]["name"] == "cpu (smoke)" and candidate["sources"] == report["sources"]
    assert set(candidate["ops"]) == {"rms_norm", "apply_rotary", "swiglu", "cross_entropy", "fused_linear_cross_entropy"}
    assert set(candidate["ops"]["rms_norm"]["eager"]) == {"fwd", "fwd_bwd", "shapes"}
