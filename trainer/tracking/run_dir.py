"""Where a run lives: a stable directory keyed on the run name and id, and its frozen config.

The id comes from (in order) run.id, the launcher's job id (SLURM job [+ array task],
torchrun's rendezvous id), or a fresh timestamp. A requeued or restarted job therefore
lands in the same directory and finds its checkpoints.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

FROZEN_CONFIG = "config.yaml"


def launcher_run_id(env: Mapping[str, str] = os.environ) -> str | None:
    """A run id every rank and every restart of this job agrees on, if the launcher gives one."""
    if env.get("SLURM_JOB_ID"):
        job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
        task = env.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    rdzv = env.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return f"tr-{rdzv}"
    if env.get("PET_RDZV_ID"):  # Kubeflow PyTorchJob (elastic)
        return f"k8s-{env['PET_RDZV_ID']}"
    return None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def resolve_run_dir(run_name: str, run_id: str | None, run_dir: str | None, runs_dir: str) -> tuple[Path, str]:
    """(absolute run dir, run id). Raises UserError when the dir cannot be created or written."""
    if run_dir:
        path = Path(run_dir).expanduser().absolute()
        rid = run_id or path.name
    else:
        rid = run_id or launcher_run_id() or new_run_id()
        path = (Path(runs_dir).expanduser() / run_name / rid).absolute()
    ensure_writable(path)
    return path, rid


def ensure_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"run dir {path} is not writable ({e.strerror or e}). Choose another with run.dir=PATH "
            "or paths.runs_dir=PATH."
        ) from None


def freeze_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the fully resolved config; an older, different one is kept as config.<n>.yaml."""
    path = run_dir / FROZEN_CONFIG
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path.exists():
        old = path.read_text()
        if old == text:
            return path
        n = 1
        while (run_dir / f"config.{n}.yaml").exists():
            n += 1
        path.rename(run_dir / f"config.{n}.yaml")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load_frozen(path: Path) -> DictConfig:
    if not path.is_file():
        raise UserError(f"no frozen config at {path}")
    return OmegaConf.load(path)  # type: ignore[return-value]
