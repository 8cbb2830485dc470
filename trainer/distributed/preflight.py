"""Checks that fail in seconds, before the first collective, on what clusters get wrong.

A wrong task layout, a master address other nodes cannot reach, a container without
`scontrol`, or Docker's 64 MiB /dev/shm otherwise show up as a hang at the first
all_reduce or a "bus error" in a loader worker minutes later. Each check reads only the
environment (passed in, so tests can craft it) and raises UserError naming the fix.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import shutil
import socket
from typing import Mapping

from trainer.distributed.env import detect
from trainer.errors import UserError

MIB = 1024**2
# Per data-loader worker: room for its prefetched batches (prefetch_factor=2) in shared memory,
# with margin. Docker's default /dev/shm (64 MiB) is too small from two workers on.
LOADER_WORKER_SHM_BYTES = 64 * MIB
RESOLVE_TIMEOUT_S = 10.0
INTERACTIVE_SLURM_JOB_NAMES = ("bash", "interactive")  # salloc/srun --pty shells (as trainer.distributed.env)


def preflight_checks(
    devices: int,
    num_nodes: int,
    num_workers: int,
    env: Mapping[str, str] = os.environ,
    *,
    shm_path: str = "/dev/shm",
) -> None:
    """Run every check for this process; raise UserError on the first problem.

    devices: processes per node (trainer.devices); num_nodes: trainer.num_nodes;
    num_workers: data-loader workers per process.
    """
    launcher = detect(env).launcher  # "torchrun" | "k8s" | "slurm" | None, as the trainer itself decides
    check_task_layout(devices, num_nodes, env, launcher)
    check_visible_gpus(devices, env)
    if launcher is not None and devices * num_nodes > 1:
        check_master_address(num_nodes, env, launcher)
    if slurm_job(env) and launcher is not None:  # srun tasks, or torchrun started inside a SLURM job
        check_scontrol(env)
    check_shm(devices, num_workers, shm_bytes(shm_path))


def slurm_job(env: Mapping[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_ID")) and env.get("SLURM_JOB_NAME") not in INTERACTIVE_SLURM_JOB_NAMES


def check_task_layout(devices: int, num_nodes: int, env: Mapping[str, str], launcher: str | None) -> None:
    """The launcher started exactly trainer.devices processes per node on trainer.num_nodes nodes."""
    want = devices * num_nodes
    if launcher in ("torchrun", "k8s"):
        world, local = _int(env.get("WORLD_SIZE")), _int(env.get("LOCAL_WORLD_SIZE"))
        if local is not None and local != devices:
            raise UserError(
                f"{launcher} started {local} processes on this node but trainer.devices={devices}:"
                f" run torchrun --nproc-per-node={devices} (python -m launch.torchrun / launch.k8s render it)"
                f" or set trainer.devices={local}"
            )
        if world is not None and world != want:
            raise UserError(
                f"{launcher}'s world has {world} processes but trainer.devices={devices} x trainer.num_nodes={num_nodes}"
                f" needs {want}: start {num_nodes} nodes (torchrun --nnodes={num_nodes}) or set"
                f" trainer.num_nodes={max(world // max(devices, 1), 1)}"
            )
    elif launcher == "slurm":
        ntasks = int(env["SLURM_NTASKS"])
        per_node = slurm_tasks_per_node(env)
        nodes = _int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"))
        fix = f"use #SBATCH --nodes={num_nodes} --ntasks-per-node={devices} and start ranks with srun (python -m launch.slurm renders it)"
        if per_node is not None and per_node != devices:
            raise UserError(f"SLURM started {per_node} tasks on this node but trainer.devices={devices}: {fix}")
        if nodes is not None and nodes != num_nodes:
            raise UserError(f"the SLURM job has {nodes} nodes but trainer.num_nodes={num_nodes}: {fix}")
        if ntasks != want:
            raise UserError(
                f"SLURM started {ntasks} tasks but trainer.devices={devices} x trainer.num_nodes={num_nodes} needs {want}: {fix}"
            )


def slurm_tasks_per_node(env: Mapping[str, str]) -> int | None:
    """Tasks on this node: SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE ('8(x2),4')."""
    if _int(env.get("SLURM_NTASKS_PER_NODE")) is not None:
        return _int(env.get("SLURM_NTASKS_PER_NODE"))
    spec = env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts: list[int] = []
    for part in spec.split(","):
        n, _, rep = part.partition("(x")
        counts += [int(n)] * (int(rep.rstrip(")")) if rep else 1)
    node_id = _int(env.get("SLURM_NODEID")) or 0
    return counts[node_id] if node_id < len(counts) else None


def check_visible_gpus(devices: int, env: Mapping[str, str]) -> None:
    """Every local rank needs its own GPU: CUDA_VISIBLE_DEVICES must list at least trainer.devices."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() in ("", "NoDevFiles", "-1"):
        return  # not restricted (or a CPU run)
    count = len([d for d in visible.split(",") if d.strip()])
    if count < devices:
        raise UserError(
            f"this process sees {count} GPU(s) (CUDA_VISIBLE_DEVICES={visible}) but trainer.devices={devices} ranks"
            " run on this node, one GPU each: give every task all of the node's GPUs (SLURM: --gpus-per-node"
            f"={devices} without --gpus-per-task, or srun --gpu-bind=none) or set trainer.devices={count}"
        )


def master_address(env: Mapping[str, str]) -> tuple[str, str]:
    """(address, where it came from): MASTER_ADDR, else the first node of the SLURM job."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"], "MASTER_ADDR"
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist:
        from pytorch_lightning.plugins.environments import SLURMEnvironment

        return SLURMEnvironment.resolve_root_node_address(nodelist), f"SLURM_JOB_NODELIST={nodelist}"
    raise UserError(
        "no master address: set MASTER_ADDR (and MASTER_PORT) to the first node's address,"
        " or start the job with torchrun / srun (python -m launch.torchrun / launch.slurm)"
    )


def check_master_address(num_nodes: int, env: Mapping[str, str], launcher: str) -> None:
    """The rank-0 host must resolve, and on several nodes to an address that is not loopback."""
    host, source = master_address(env)
    addresses = resolve(host)
    if not addresses:
        raise UserError(
            f"the master address {host!r} (from {source}) does not resolve from this node: use an address every"
            " node can reach (an IP, or a name in DNS / /etc/hosts on every node); with torchrun pass --local-addr"
            " (launcher.local_addr)"
        )
    if num_nodes > 1 and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise UserError(
            f"the master address {host!r} (from {source}) resolves to loopback ({', '.join(sorted(addresses))}) but"
            f" the job spans {num_nodes} nodes, which cannot reach it: fix /etc/hosts (Debian maps the hostname"
            " to 127.0.1.1) or give torchrun this node's real address with --local-addr (launcher.local_addr)"
        )


def resolve(host: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> set[str]:
    """The host's addresses, or an empty set if it does not resolve within the timeout."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        infos = pool.submit(socket.getaddrinfo, host, None).result(timeout=timeout_s)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return set()
    finally:
        pool.shutdown(wait=False)  # a stuck resolver must not hold the check past its timeout
    return {str(info[4][0]) for info in infos}


def check_scontrol(env: Mapping[str, str]) -> None:
    """Under SLURM someone must requeue a preempted job: our batch script, or the trainer with scontrol."""
    if env.get("TRAINER_REQUEUE_BY") == "batch":
        return  # launch/slurm's batch script requeues from the host when srun exits with the requeue code
    if shutil.which("scontrol", path=env.get("PATH", os.defpath)) is None:
        raise UserError(
            "running under SLURM but `scontrol` is not on PATH (inside the container?), so a preempted job cannot"
            " requeue itself: submit with python -m launch.slurm (its batch script requeues from the host),"
            " or mount the host's SLURM client into the container (pyxis --container-mounts=/usr/bin/scontrol:"
            "/usr/bin/scontrol,/etc/slurm:/etc/slurm plus libslurm), or install slurm-client in the image"
        )


def shm_bytes(path: str = "/dev/shm") -> int | None:
    """Size of the shared-memory mount, or None when there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def required_shm_bytes(procs_per_node: int, num_workers: int) -> int:
    """Shared memory the loader workers of one node need (0 without workers)."""
    return procs_per_node * num_workers * LOADER_WORKER_SHM_BYTES


def check_shm(devices: int, num_workers: int, available: int | None) -> None:
    need = required_shm_bytes(devices, num_workers)
    if need == 0:
        return
    have = "no /dev/shm" if available is None else f"/dev/shm is {available / MIB:.0f} MiB"
    if available is None or available < need:
        gib = -(-need // 1024**3)
        raise UserError(
            f"{have} but {devices} processes x data.num_workers={num_workers} loader workers need"
            f" {need / MIB:.0f} MiB: docker run --shm-size={gib}g, Kubernetes: a memory-backed /dev/shm"
            f" (python -m launch.k8s sizes it; launcher.shm_size), or lower data.num_workers"
        )


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).split("(")[0])
    except (TypeError, ValueError):
        return None
