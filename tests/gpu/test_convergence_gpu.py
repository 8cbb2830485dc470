"""Does training with the CUDA kernels converge like training without them? Several seeds of each,
bf16 autocast, the same data; plus a planted backward defect the comparison must catch.

Run first by scripts/gpu_check.sh. With CONVERGENCE_OUT set, every curve and statistic is written
there as JSON (the evidence, whether the test passes or fails).

The comparison (tests/fixtures/convergence.py): per run, the mean log-loss over a window; per
window, a one-sided exact permutation test of "the fused runs' mean is higher". Under no defect
the 2 x SEEDS runs are draws from one distribution (labels exchangeable; pairing runs by init seed
only makes the test more conservative), so the p-value is exact and a correct kernel fails a
window with probability ALPHA at most. Two windows, so the suite's false-failure rate is at most
2 x ALPHA = 1%. With 8 seeds per arm the smallest attainable p-value is 1/C(16, 8) = 7.8e-5, so a
consistent bias is caught long before complete separation of the arms.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch

from tests.fixtures.convergence import (
    permutation_p_value,
    plant_cross_entropy_defect,
    train_curve,
    window_log_mean,
)
from trainer import ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SEEDS = range(8)
STEPS = 200
WINDOWS = {"learning (steps 20-99)": (20, 100), "late (steps 100-199)": (100, 200)}
ALPHA = 0.005  # per window


@pytest.fixture(scope="module")
def curves() -> dict[str, list[list[float]]]:
    assert ops.set_kernel_mode("fused") == "fused" and ops.kernel_status()["extension"]["with_cuda"]
    runs = {
        "reference": [train_curve("reference", s, STEPS, "cuda") for s in SEEDS],
        "fused": [train_curve("fused", s, STEPS, "cuda") for s in SEEDS],
        "planted": [train_curve("reference", s, STEPS, "cuda", patch=plant_cross_entropy_defect) for s in SEEDS],
    }
    stats = {arm: {w: [window_log_mean(c, a, b) for c in runs[arm]] for w, (a, b) in WINDOWS.items()} for arm in runs}
    p_values = {arm: {w: permutation_p_value(stats["reference"][w], stats[arm][w]) for w in WINDOWS}
                for arm in ("fused", "planted")}
    if os.environ.get("CONVERGENCE_OUT"):
        out = Path(os.environ["CONVERGENCE_OUT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                   "seeds": list(SEEDS), "steps": STEPS, "windows": WINDOWS, "alpha": ALPHA,
                                   "window_log_means": stats, "p_values": p_values, "curves": runs}, indent=1))
    for arm in ("reference", "fused", "planted"):
        for w in WINDOWS:
            xs = stats[arm][w]
            print(f"{arm:9s} {w}: exp(mean log loss) per seed {[round(math.exp(x), 4) for x in xs]}"
                  + (f", p(fused-like worse) = {p_values[arm][w]:.4g}" if arm in p_values else ""))
    return {"runs": runs, "stats": stats, "p": p_values}


def test_every_run_learns(curves):
    for arm in ("reference", "fused"):
        for seed, c in zip(SEEDS, curves["runs"][arm]):
            assert all(math.isfinite(v) for v in c), f"{arm} seed {seed}: non-finite loss"
            # ln(256) = 5.5 at init; a run that has learned the permutation ends far below 0.3 (the
            # median: late loss spikes of a few steps are part of this run's chaos, not a failure to learn).
            assert statistics.median(c[-40:]) < 0.3, f"{arm} seed {seed} did not learn: last 40 steps {c[-40:]}"


@pytest.mark.parametrize("window", list(WINDOWS))
def test_fused_runs_are_no_worse_than_reference_runs(curves, window):
    ref, fused = curves["stats"]["reference"][window], curves["stats"]["fused"][window]
    p = curves["p"]["fused"][window]
    spread = f"reference {sorted(round(math.exp(x), 4) for x in ref)}, fused {sorted(round(math.exp(x), 4) for x in fused)}"
    assert p >= ALPHA, f"{window}: the fused runs are worse than the reference runs (p = {p:.2g}): {spread}"
    # The issue's criterion, one-sided like the test above: the fused seeds' mean is not beyond the
    # worst reference seed.
    assert statistics.mean(fused) <= max(ref), f"{window}: fused mean beyond the reference spread: {spread}"


def test_the_comparison_catches_a_planted_backward_defect(curves):
    """The same comparison on runs whose cross-entropy backward aims every 8th row at the wrong token
    (loss floor ~0.13 where the reference reaches ~0.02-0.04): the late window must flag them, or the
    test above could not have caught a defect of that size."""
    p = curves["p"]["planted"]
    assert min(p.values()) < ALPHA, f"a planted backward defect went unnoticed: p-values {p}"
