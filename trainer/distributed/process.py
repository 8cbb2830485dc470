"""Environment defaults a rank sets before its process group starts (the launch preflight checks
are trainer.distributed.preflight's, called just before)."""
from __future__ import annotations

import os
from pathlib import Path


def prepare_rank(*, logs: Path, cache_dir: str, on_gpu: bool) -> None:
    if on_gpu:
        from trainer.distributed.nccl import set_nccl_defaults

        set_nccl_defaults(logs)
    # DeepSpeed JIT-builds small C++ ops (its CPU shared-memory allreduce, CPU Adam) on first use:
    # keep them in the node-local cache so every later run (and rank) reuses the build.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(cache_dir).expanduser() / "torch_extensions"))
