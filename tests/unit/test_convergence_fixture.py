"""The statistics and the planted defect behind tests/gpu/test_convergence_gpu.py, on the CPU."""
from __future__ import annotations

import json
import math
from itertools import combinations

import pytest
import torch

from tests.conftest import ROOT
from tests.fixtures.convergence import (
    WRONG_TARGET_EVERY,
    main,
    permutation_p_value,
    plant_cross_entropy_defect,
    train_curve,
    window_log_mean,
    window_stats,
)
from trainer import ops
from trainer.ops import reference


def test_permutation_p_value_is_the_exact_share_of_relabellings():
    ref, worse = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]
    assert permutation_p_value(ref, worse) == pytest.approx(1 / math.comb(8, 4))  # complete separation
    assert permutation_p_value(worse, ref) == 1.0  # better: nothing to flag
    assert permutation_p_value([1.0, 1.0], [1.0, 1.0]) == 1.0
    # Against a brute-force count over every split.
    a, b = [0.3, -0.2, 0.5, 0.1, 0.0], [0.4, 0.2, 0.6]
    pooled = a + b
    obs = sum(b) / 3 - sum(a) / 5
    splits = list(combinations(range(8), 3))
    hits = sum(sum(pooled[i] for i in s) / 3 - (sum(pooled) - sum(pooled[i] for i in s)) / 5 >= obs - 1e-12 for s in splits)
    assert permutation_p_value(a, b) == pytest.approx(hits / len(splits))


def test_window_log_mean_damps_a_single_spike():
    flat = [0.1] * 10
    spiky = [0.1] * 9 + [10.0]
    assert window_log_mean(flat, 0, 10) == pytest.approx(math.log(0.1))
    # An arithmetic mean would move 10x; the log-mean moves by log(100) / 10.
    assert window_log_mean(spiky, 0, 10) - window_log_mean(flat, 0, 10) == pytest.approx(math.log(100) / 10)


def test_the_planted_defect_changes_only_its_rows_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 11, generator=g)
    targets = torch.randint(0, 11, (32,), generator=g)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    good = reference.cross_entropy(x1, targets)
    good.backward()
    undo = plant_cross_entropy_defect()
    try:
        bad = ops.cross_entropy(x2, targets)
        bad.backward()
    finally:
        undo()
    assert ops.cross_entropy is not None and bad.item() == pytest.approx(good.item())  # the loss is right
    rows = torch.arange(32) % WRONG_TARGET_EVERY == WRONG_TARGET_EVERY - 1
    torch.testing.assert_close(x2.grad[~rows], x1.grad[~rows])
    assert (x2.grad[rows] - x1.grad[rows]).abs().max() > 1e-3
    assert torch.allclose(x2.grad.sum(-1), torch.zeros(32), atol=1e-6)  # still a softmax gradient


@pytest.mark.slow  # two short runs of the convergence model on the CPU (~10 s on an idle machine)
@pytest.mark.usefixtures("kernels_built")
def test_train_curve_runs_both_arms_on_the_same_start():
    ref = train_curve("reference", seed=0, steps=2, device="cpu")
    fused = train_curve("fused", seed=0, steps=2, device="cpu")
    assert len(ref) == len(fused) == 2 and all(math.isfinite(v) for v in ref + fused)
    assert fused[0] == pytest.approx(ref[0], rel=1e-2)  # same weights, same batch; bf16 rounding apart
    assert ops.kernel_mode() == "reference"  # each run restores the mode


@pytest.fixture
def kernels_built():
    ops.set_kernel_mode("fused")
    ops.set_kernel_mode("reference")


EVIDENCE = [ROOT / "docs/gpu/cpu_convergence_4_seeds.json", ROOT / "docs/gpu/cpu_convergence_planted_3_seeds.json"]


def test_the_convergence_doc_figures_come_from_the_committed_curves():
    """docs/gpu/convergence.md's tables: the p-values recomputed from the raw curves."""
    curves = {k: v for f in EVIDENCE for k, v in json.loads(f.read_text())["curves"].items()}
    stats = window_stats(curves)
    assert stats["fused"]["steps 20-99"]["p"] == pytest.approx(0.557, abs=1e-3)
    assert stats["fused"]["steps 100-199"]["p"] == pytest.approx(0.371, abs=1e-3)
    assert stats["planted"]["steps 20-99"]["p"] == stats["planted"]["steps 100-199"]["p"] == pytest.approx(1 / 35)
    assert [round(v, 3) for v in stats["reference"]["steps 20-99"]["per_seed"]] == [0.190, 0.179, 0.111, 0.226]


@pytest.mark.slow  # 2 x 3 steps of the convergence model on the CPU
def test_the_driver_reproduces_the_start_of_the_committed_curves(tmp_path):
    """`python -m tests.fixtures.convergence run` is what made the evidence: its first steps match."""
    threads = torch.get_num_threads()
    out = tmp_path / "c.json"
    try:
        assert main(["run", "--arms", "reference,planted", "--seeds", "0", "--steps", "3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    curves = json.loads(out.read_text())["curves"]
    committed = {k: v for f in EVIDENCE for k, v in json.loads(f.read_text())["curves"].items()}
    for key in ("reference:0", "planted:0"):
        assert curves[key] == pytest.approx(committed[key][:3], rel=1e-3), key
