"""train/grad_norm is the global norm *before* clipping, through the real command line with clipping engaged.

With plain SGD (no momentum, no weight decay, constant lr) a step moves the parameters by exactly
lr x the clipped gradient, so the checkpoints show the post-clip norm (clip value) beside the logged one."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from tests.conftest import cli

pytestmark = pytest.mark.slow

CLIP, LR = 1e-3, 0.1


def weights(run, step: int) -> dict[str, torch.Tensor]:
    """Each parameter once: tied weights (embedding and LM head) are one storage under two names."""
    state = torch.load(run / "checkpoints" / f"step-{step:08d}" / "state.ckpt", map_location="cpu", weights_only=True)
    seen, out = set(), {}
    for k, v in state["state_dict"].items():
        if v.is_floating_point() and v.untyped_storage().data_ptr() not in seen:
            seen.add(v.untyped_storage().data_ptr())
            out[k] = v.double()
    return out


def test_the_logged_grad_norm_is_the_norm_before_clipping(tmp_path, shared_cache):
    run = tmp_path / "run"
    proc = cli("trainer.train", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32",
               "data.batch_size=4", "data.val_batches=1", "trainer.max_steps=3", "trainer.val_every_steps=3",
               "trainer.log_every_steps=1", "trainer.progress_bar=false", "checkpoint.every_n_steps=1",
               f"trainer.gradient_clip_val={CLIP}", "optim=sgd", f"optim.lr={LR}", "optim.momentum=0",
               "optim.nesterov=false", "scheduler=none", "logger=csv", f"run.dir={run}",
               f"paths.cache_dir={shared_cache}", timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    norms = [float(r["train/grad_norm"]) for r in csv.DictReader(open(run / "csv" / "metrics.csv"))
             if r.get("train/grad_norm")]
    assert len(norms) == 3
    # Clipping engaged (every norm far above the clip value) and the logged value is not the clipped one.
    assert all(n > 100 * CLIP for n in norms), norms
    for step in (1, 2):  # each update is lr x the clipped gradient: its norm is lr x CLIP, not lr x the logged norm
        before, after = weights(run, step), weights(run, step + 1)
        moved = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))
        assert moved == pytest.approx(LR * CLIP, rel=0.02), (step, moved, norms)
