"""Ranks started by an external launcher must agree on what they train, or stop with a clear error."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.distributed.helpers import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ranks_with_different_configs_stop_with_a_clear_error(tmp_path, shared_cache):
    """As a PyTorchJob/srun would: each rank composes its own config; rank 1 has another learning rate."""
    port = _free_port()
    procs = []
    started = time.time()
    for rank, lr in ((0, "1e-2"), (1, "2e-2")):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [sys.executable, "-m", "trainer.train", *TINY, "strategy=ddp", "trainer.devices=2", "trainer.max_steps=4",
               f"optim.lr={lr}", f"run.dir={tmp_path / 'run'}", f"paths.cache_dir={shared_cache}"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    assert time.time() - started < 240
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 2, err[-3000:]
        assert "error: the ranks of this run disagree: resolved config differs" in err, err[-3000:]
        assert "ranks [1]" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
