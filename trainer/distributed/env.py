"""Which launcher started this process, and this process's place in the world."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ProcessInfo:
    launcher: str | None  # "torchrun" | "slurm" | "k8s" | None (a plain process)
    rank: int
    local_rank: int
    world_size: int


def detect(env: Mapping[str, str] = os.environ) -> ProcessInfo:
    if "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "RANK" in env and "WORLD_SIZE" in env):
        launcher = "k8s" if "PET_NPROC_PER_NODE" in env or "KUBERNETES_SERVICE_HOST" in env else "torchrun"
        return ProcessInfo(launcher, int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return ProcessInfo("slurm", int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]))
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:  # PyTorchJob without torchrun
        return ProcessInfo("k8s", int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]))
    return ProcessInfo(None, 0, 0, 1)


def local_world_size(env: Mapping[str, str] = os.environ) -> int:
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "PET_NPROC_PER_NODE"):
        v = env.get(key, "")
        if v.split("(")[0].isdigit():
            return int(v.split("(")[0])
    return 1


def cpu_threads_per_rank(local_ranks: int, env: Mapping[str, str] = os.environ) -> int:
    """Intra-op threads for each of this host's `local_ranks` ranks on CPU. OMP_NUM_THREADS when it is set (the
    user's or a launcher's choice, per process, as torchrun treats it); else the CPUs this process may run on
    (its affinity: taskset, a container's --cpuset-cpus, a SLURM allocation) shared between the local ranks.
    os.cpu_count() counts the whole machine: on a shared one, each rank's threads would then spin on cores
    that others use (measured: a tiny CPU run took 1.6x the time and 2x the CPU next to one busy process)."""
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, usable // max(1, local_ranks))
