"""A tiny distributed job for the launcher tests: every rank all_reduces (rank + 1) over gloo.

    python allreduce_job.py OUT_DIR [--requeue-once]

Rank and world come from torchrun (RANK/WORLD_SIZE) or srun (SLURM_PROCID/SLURM_NTASKS);
the rendezvous from MASTER_ADDR/MASTER_PORT, as the trainer gets them. Each rank writes
OUT_DIR/rank<r>.json with the reduced sum. With --requeue-once the first run of a SLURM job
exits with the trainer's requeue code (124), as a preempted trainer does after its checkpoint.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

REQUEUE_EXIT_CODE = 124


def main() -> int:
    out = Path(sys.argv[1])
    env = os.environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    dist.init_process_group(
        "gloo", init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    restarts = int(env.get("SLURM_RESTART_COUNT", 0) or 0)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "sum": value.item(), "host": socket.gethostname(),
        "master": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}", "restarts": restarts,
        "restart_count_env": env.get("TORCHELASTIC_RESTART_COUNT"),
    }))
    dist.destroy_process_group()
    if "--requeue-once" in sys.argv and restarts == 0:
        # As the trainer does (trainer/distributed/preemption.py): srun --kill-on-bad-exit SIGTERMs the task
        # still exiting when this one exits 124 and may then report 143; the batch script requeues on the marker.
        marker = env.get("TRAINER_REQUEUE_MARKER")
        if marker:
            Path(marker).touch()
        return REQUEUE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
