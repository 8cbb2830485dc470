"""The benchmark scripts run end to end on this machine (their figures are not asserted: timing
claims live in docs/benchmarks.md, measured by the scripts, never in tests)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # benchmark smoke runs: minutes each, outside the default suite


def _run(args, tmp_path, shared_cache, timeout=560):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "TRAINER_CACHE": str(shared_cache),
           "TRAINER_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_overhead_quick_compares_the_three_variants(tmp_path, shared_cache):
    out = tmp_path / "overhead.json"
    proc = _run(["benchmarks/overhead.py", "--quick", "--model", "nano", "--rounds", "1", "--json", str(out)],
                tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("ratio_vs_handwritten=")
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"hand-written", "lightning", "ours"}
    for variant in data["per_round"].values():
        assert len(variant[0]["step_s"]) == data["timed_steps"]
    # ours went through run_fit: its final checkpoint save was timed
    assert data["checkpoint_save_s"] > 0
    # every variant set the mode itself (default reference) and recorded the ops it ran
    assert data["kernels"] == "reference" and data["same_kernel_routes_in_every_variant"] is True
    for name, routes in data["kernel_routes"].items():
        assert set(routes.values()) == {"reference"} and len(routes) == 5, (name, routes)
    assert "kernels=reference (reference ops)" in proc.stdout


def test_overhead_runs_every_variant_in_the_kernel_mode_asked_for(tmp_path, shared_cache):
    """kernels=fused on the CPU (the C++ paths): hand-written and plain Lightning, which run before
    ours in round 0 and never go through run_fit, run the fused ops too (the mode is process-wide)."""
    out = tmp_path / "overhead.json"
    proc = _run(["benchmarks/overhead.py", "--model", "nano", "--rounds", "1", "--steps", "3", "--warmup", "1",
                 "--kernels", "fused", "--json", str(out)], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["kernels"] == "fused" and data["same_kernel_routes_in_every_variant"] is True
    for name in ("hand-written", "lightning", "ours"):
        assert set(data["kernel_routes"][name].values()) == {"fused"}, (name, data["kernel_routes"][name])


def test_mfu_smoke_runs_baseline_ours_and_zero2_through_the_real_fit(tmp_path, shared_cache):
    out = tmp_path / "mfu"
    proc = _run(["benchmarks/mfu.py", "--device", "cpu", "--smoke", "--variants", "handwritten,ours_reference,ours,zero2_1b",
                 "--steps", "2", "--warmup", "1", "--zero-steps", "1", "--budget-s", "500", "--out", str(out)], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out / "mfu.json").read_text())
    rows = data["variants"]
    for name in ("handwritten", "ours_reference", "ours_auto"):  # "ours" is the old name of ours_auto
        assert rows[name]["status"] == "ok", rows[name]
        # every row says what ran: each op's route, compile, micro-batch, precision
        assert set(rows[name]["kernel_routes"].values()) == {"reference"}, rows[name]["kernel_routes"]
        assert rows[name]["config"]["micro_batch"] == 4 and rows[name]["config"]["precision"] == "32-true"
    assert rows["ours_auto"]["kernels"]["requested"] == "auto" and rows["ours_reference"]["kernels"]["requested"] == "reference"
    assert data["ratios_vs_handwritten"]["ours_reference"] > 0 and data["ratios_vs_handwritten"]["ours_auto"] > 0
    assert len({r["bench_run"] for r in rows.values()}) == 1  # one invocation: one benchmark run
    zero2 = rows["zero2_1b"]
    assert zero2["status"] == "ok" and zero2["config"]["strategy"] == "deepspeed ZeRO-2", zero2
    assert "zero2_1b" not in data["ratios_vs_handwritten"]  # another model: no ratio
    table = (out / "mfu_table.md").read_text()
    assert "| ours_reference | gpt2, mb 4, 32-true, eager, reference ops" in table, table
