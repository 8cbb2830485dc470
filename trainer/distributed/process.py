"""What a rank sets up before its process group starts: launch checks and environment defaults."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("trainer")


def prepare_rank(*, run_dir: Path, cache_dir: str, on_gpu: bool, devices: int, num_nodes: int, num_workers: int) -> None:
    """Run the launch preflight checks (SLURM layout, master address, /dev/shm; UserError on a
    problem, within seconds, instead of a hang at rendezvous) and set environment defaults."""
    try:
        from trainer.distributed.preflight import preflight_checks  # the launchers' checks
    except ImportError:  # not merged in this checkout
        preflight_checks = None
    if preflight_checks is not None:
        preflight_checks(devices, num_nodes, num_workers, os.environ)
    if on_gpu:
        from trainer.distributed.nccl import set_nccl_defaults

        set_nccl_defaults(run_dir)
    # DeepSpeed JIT-builds small C++ ops (its CPU shared-memory allreduce, CPU Adam) on first use:
    # keep them in the node-local cache so every later run (and rank) reuses the build.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(cache_dir).expanduser() / "torch_extensions"))
