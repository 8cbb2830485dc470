"""The `launcher:` config section, parsed, and the job spec the renderers take.

configs/launcher/{torchrun,slurm,k8s}.yaml fill this section (select one with `+launcher=slurm`).
Its schema is trainer.config's `LauncherConfig`; `parse_launcher` checks a section against it
(unknown key, wrong type, ranges -> UserError) and `job_spec` joins it with the experiment's
own layout (trainer.devices per node, trainer.num_nodes), so a renderer never sees a
node count that disagrees with what the trainer will check at start-up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from trainer.config import LauncherConfig, cpus_per_rank, validate_launcher
# The trainer's exit code after a preemption checkpoint: the SLURM batch script requeues on it.
from trainer.distributed.preemption import REQUEUE_EXIT as REQUEUE_EXIT_CODE
from trainer.errors import UserError, closest

GIB = 1024**3
MIB = 1024**2


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
    config_dir: str | None = None  # the user's --config-dir, passed on to the job (absolute)
    checkpoint_bytes: int | None = None  # estimated size of one checkpoint, all ranks (Kubernetes grace period)

    @property
    def cpus_per_rank(self) -> int:
        """launcher.cpus_per_task, else one core per loader worker and one for the rank itself."""
        return cpus_per_rank(self.launcher.cpus_per_task, self.num_workers)

    def train_args(self) -> list[str]:
        """What follows `python -m trainer.train` in the job: --config-dir, then the overrides."""
        return [*(["--config-dir", self.config_dir] if self.config_dir else []), *self.overrides]


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
    validate_launcher(cfg, kind)
    return cfg


def job_spec(cfg: DictConfig, kind: str, overrides: list[str] | tuple[str, ...], config_dir: str | None = None) -> JobSpec:
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
        config_dir=config_dir,
        checkpoint_bytes=estimate_checkpoint_bytes(cfg) if kind == "k8s" else None,
    )


# fp32 weights, Adam's two moments, and a low-precision (or master) copy: what a checkpoint holds per parameter.
CHECKPOINT_BYTES_PER_PARAM = 16
VOCAB_BOUND = 65536  # a data-derived vocabulary (null) counted at this size for the estimate


def estimate_checkpoint_bytes(cfg: DictConfig) -> int | None:
    """One checkpoint's size over all ranks: the model built on the meta device (no memory, no data),
    its parameters x 16 bytes. None when the model cannot be built that way."""
    try:
        import torch
        from hydra.utils import instantiate

        from trainer.config import DATA_DERIVED

        fills = {k: VOCAB_BOUND if k == "vocab_size" else 1 for k in DATA_DERIVED if k in cfg.model and cfg.model[k] is None}
        with torch.device("meta"):
            net = instantiate(cfg.model, **fills)
        return CHECKPOINT_BYTES_PER_PARAM * sum(p.numel() for p in net.parameters())
    except Exception:  # noqa: BLE001 - an estimate only: the grace period then falls back to its floor
        return None


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
