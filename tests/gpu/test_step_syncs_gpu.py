"""On a GPU: our trainer's steps between two logging steps make no synchronising CUDA call (torch's
own count, torch.cuda.set_sync_debug_mode), so the host runs ahead of the GPU as the hand-written
loop's does. The CPU run of the same check counts the Python-level reads instead
(tests/unit/test_step_overhead.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

NANO = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.seq_len=64", "data.batch_size=4"]


def test_no_synchronising_cuda_call_between_logging_steps(shared_cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAINER_CACHE": str(shared_cache)}
    proc = subprocess.run([sys.executable, "tests/fixtures/host_syncs.py", "11", "19", "--cuda", *NANO,
                           "trainer.log_every_steps=10", f"paths.cache_dir={shared_cache}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["calls"] == {}, f"synchronising CUDA calls in {result['steps']} steps: {result['calls']}"
