"""The `launcher:` config section: a typed schema, and the job spec the renderers take.

configs/launcher/{torchrun,slurm,k8s}.yaml fill this section (select one with `+launcher=slurm`).
The trainer's schema holds it as `Any`, so `parse_launcher` checks it here against
`LauncherConfig` (unknown key, wrong type -> UserError) and joins it with the experiment's
own layout (trainer.devices per node, trainer.num_nodes), so a renderer never sees a
node count that disagrees with what the trainer will check at start-up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from trainer.errors import UserError, closest
# The trainer's exit code after a preemption checkpoint: the SLURM batch script requeues on it.
from trainer.fit import REQUEUE_EXIT as REQUEUE_EXIT_CODE

LAUNCHER_KINDS = ("torchrun", "slurm", "k8s")
GIB = 1024**3
MIB = 1024**2


@dataclass
class LauncherConfig:
    kind: str = "torchrun"  # torchrun | slurm | k8s
    job_name: Optional[str] = None  # None: run.name
    nodes: Optional[int] = None  # None: trainer.num_nodes; if set it must agree with it
    gpus_per_node: Optional[int] = None  # None: trainer.devices (0 on a CPU run); if set it must agree
    min_nodes: Optional[int] = None  # elastic: torchrun --nnodes=min:max, PyTorchJob minReplicas
    max_restarts: int = 3  # torchrun --max-restarts / PyTorchJob elasticPolicy.maxRestarts
    # torchrun
    rdzv_endpoint: Optional[str] = None  # HOST:PORT of the c10d store (multi-node); None on one node: --standalone
    rdzv_id: Optional[str] = None  # same on every node; the trainer's run id derives from it
    local_addr: Optional[str] = None  # this node's reachable address when its hostname resolves to loopback
    rdzv_is_host: Optional[bool] = None  # force which node hosts the c10d store (--rdzv-conf=is_host=...)
    # SLURM
    time: str = "04:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None  # e.g. 0 for the whole node, 400G
    signal_seconds: int = 120  # USR1 this long before the time limit: time to save a checkpoint
    requeue: bool = True
    log_dir: Optional[str] = None  # sbatch stdout/stderr; None: <paths.runs_dir>/<run.name>/slurm
    sbatch_extra: List[str] = field(default_factory=list)  # verbatim `#SBATCH` options, e.g. ["--exclusive"]
    # containers (SLURM via pyxis/enroot, Kubernetes)
    image: Optional[str] = None
    container_mounts: List[str] = field(default_factory=list)  # SRC:DST[:FLAGS]
    workdir: str = "/workspace"  # inside the container
    # Kubernetes
    namespace: str = "default"
    shm_size: Optional[str] = None  # /dev/shm for the loader workers and NCCL; None: sized from the config
    wandb_secret: Optional[str] = "wandb"  # Secret holding the W&B key (key: api-key); None: no W&B credentials
    runs_volume_claim: Optional[str] = None  # PVC mounted as the runs dir, shared by every pod and restart
    restart_policy: str = "OnFailure"  # OnFailure | Always | ExitCode | Never
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for every rank (no secrets here)


@dataclass(frozen=True)
class JobSpec:
    """What every renderer needs: the launcher section plus the experiment's own layout."""

    launcher: LauncherConfig
    job_name: str
    nodes: int
    procs_per_node: int  # trainer.devices: GPUs, or CPU processes on a CPU run
    gpus_per_node: int  # 0 on a CPU run
    num_workers: int  # data loader workers per process (sizes /dev/shm)
    runs_dir: str
    overrides: tuple[str, ...]  # passed through to `python -m trainer.train` unchanged


def parse_launcher(node: DictConfig | dict | None, kind: str) -> LauncherConfig:
    """Check the `launcher:` section against LauncherConfig; errors name the key and the fix."""
    if node is None:
        node = {}
    schema = OmegaConf.structured(LauncherConfig(kind=kind))
    try:
        merged = OmegaConf.merge(schema, node)
    except ConfigKeyError as e:  # a key LauncherConfig does not have
        leaf = str(e.key) if e.key is not None else "?"
        valid = [f.name for f in fields(LauncherConfig)]
        raise UserError(
            f"unknown config key 'launcher.{leaf}'.{closest(leaf, valid)} Valid keys: {', '.join(valid)}."
        ) from None
    except OmegaConfBaseException as e:  # a value of the wrong type
        raise UserError(f"wrong type for 'launcher.{e.key}': {str(e).splitlines()[0]}") from None
    cfg: LauncherConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if cfg.kind not in LAUNCHER_KINDS:
        raise UserError(f"launcher.kind={cfg.kind!r} is not one of {', '.join(LAUNCHER_KINDS)}")
    if cfg.kind != kind:
        raise UserError(f"this is the {kind} launcher but the config selects launcher.kind={cfg.kind}: use +launcher={kind}")
    if cfg.max_restarts < 0:
        raise UserError(f"launcher.max_restarts must be >= 0, got {cfg.max_restarts}")
    if cfg.signal_seconds <= 0:
        raise UserError(f"launcher.signal_seconds must be positive, got {cfg.signal_seconds}")
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", cfg.time):
        raise UserError(f"launcher.time={cfg.time!r} is not a SLURM time limit: use HH:MM:SS or D-HH:MM:SS")
    if cfg.restart_policy not in ("OnFailure", "Always", "ExitCode", "Never"):
        raise UserError(f"launcher.restart_policy={cfg.restart_policy!r}: use OnFailure, Always, ExitCode or Never")
    for key, value in cfg.env.items():
        if re.search(r"(KEY|TOKEN|SECRET|PASSWORD)", key, re.I):
            raise UserError(
                f"launcher.env.{key} looks like a secret: never put credentials in a config."
                " Use launcher.wandb_secret (a Kubernetes Secret) or the cluster's own secret store."
            )
    return cfg


def job_spec(cfg: DictConfig, kind: str, overrides: list[str] | tuple[str, ...]) -> JobSpec:
    """Join the composed, validated run config with its launcher section."""
    launcher = parse_launcher(cfg.get("launcher"), kind)
    t = cfg.trainer
    # accelerator=auto means GPUs on a cluster (SLURM, Kubernetes ask for them); torchrun asks for nothing
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and kind in ("slurm", "k8s"))
    gpus = t.devices if on_gpu else 0
    if launcher.nodes is not None and launcher.nodes != t.num_nodes:
        raise UserError(
            f"launcher.nodes={launcher.nodes} but trainer.num_nodes={t.num_nodes}: the launcher follows the"
            f" experiment, so set trainer.num_nodes={launcher.nodes} (and drop launcher.nodes)"
        )
    if launcher.gpus_per_node is not None and launcher.gpus_per_node != gpus:
        raise UserError(
            f"launcher.gpus_per_node={launcher.gpus_per_node} but the experiment uses {gpus} GPUs per node"
            f" (trainer.devices={t.devices}, trainer.accelerator={t.accelerator}): set trainer.devices"
            f"={launcher.gpus_per_node} trainer.accelerator=gpu (and drop launcher.gpus_per_node)"
        )
    if launcher.min_nodes is not None and not 1 <= launcher.min_nodes <= t.num_nodes:
        raise UserError(f"launcher.min_nodes={launcher.min_nodes} must be between 1 and trainer.num_nodes={t.num_nodes}")
    name = launcher.job_name or str(cfg.run.name)
    data = cfg.get("data") or {}
    return JobSpec(
        launcher=launcher,
        job_name=name,
        nodes=int(t.num_nodes),
        procs_per_node=int(t.devices),
        gpus_per_node=int(gpus),
        num_workers=int(data.get("num_workers", 0) or 0),
        runs_dir=str(cfg.paths.runs_dir),
        overrides=tuple(overrides),
    )


def with_launcher_selected(overrides: list[str], kind: str) -> list[str]:
    """Add `+launcher=<kind>` unless the overrides already pick a launcher option."""
    picked = any(re.match(r"^\+{0,2}launcher=", o) for o in overrides)
    return list(overrides) if picked else [f"+launcher={kind}", *overrides]


def parse_size(text: str) -> int:
    """'8Gi', '512Mi', '2G' -> bytes (Kubernetes quantity suffixes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?\s*", str(text))
    if not m:
        raise UserError(f"launcher.shm_size={text!r} is not a size: use e.g. 8Gi or 512Mi")
    scale = {None: 1, "Ki": 1024, "Mi": MIB, "Gi": GIB, "Ti": 1024 * GIB, "k": 1000, "K": 1000, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(float(m.group(1)) * scale[m.group(2)])
