"""NCCL defaults that make a hang diagnosable: the flight recorder names the rank and operation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping


def flight_recorder_env(logs: Path) -> dict[str, str]:
    """PyTorch's NCCL flight recorder: keep a ring of recent collectives and dump it per rank on a
    timeout, to <logs>/nccl_trace_rank_<k> (the run dir's logs/; read with `torchfrtrace`)."""
    return {
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(logs / "nccl_trace_rank_"),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",  # tear down on a timeout instead of hanging
    }


def set_nccl_defaults(logs: Path, env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the flight recorder variables the user has not set; returns what was set."""
    added = {}
    for key, value in flight_recorder_env(logs).items():
        if key not in env:
            env[key] = added[key] = value
    return added
