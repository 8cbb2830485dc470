"""Prepare a run before any rank starts: validate, choose the run dir, freeze the config there once,
write the manifest. Shared by `trainer.train` and benchmarks/ (which must start runs the same way)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from trainer.config import complete_target_sections, validate
from trainer.errors import UserError
from trainer.tracking.run_lock import RunLock


@dataclass(frozen=True)
class PreparedRun:
    dir: Path
    id: str
    frozen_config: Path  # every rank and every restart starts from this file
    launcher: str | None  # the launcher this process runs under (None: a plain process)
    rank: int
    lock: RunLock | None = None  # rank 0 holds the run dir until it ends (released at exit, or by release())

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare_run(cfg: DictConfig, argv: Sequence[str], *, run_id: str | None = None, launcher_label: str | None = None) -> PreparedRun:
    """Validate `cfg`; on rank 0 build its data and check the model against it (build.check_data_and_model);
    resolve its run dir (cfg.run.id/dir are set in place) and, on rank 0, take the run dir's lock (a
    second job is refused here, before it writes anything), freeze the config and write the manifest.
    `run_id` overrides the id from the config and the launcher."""
    from trainer.distributed.env import detect
    from trainer.tracking import run_lock
    from trainer.tracking.manifest import build_manifest, write_manifest
    from trainer.tracking.run_dir import RunDir, freeze_config, launcher_run_id, resolve_run_dir

    complete_target_sections(cfg)
    validate(cfg)
    check_required(cfg)
    if cfg.model.get("init_from"):
        with open_dict(cfg):
            cfg.model.init_from = str(Path(cfg.model.init_from).expanduser().absolute())  # frozen absolute
    proc = detect()
    rid = run_id or cfg.run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id()
    if proc.launcher and proc.world_size > 1 and not (rid or cfg.run.dir):
        raise UserError(
            f"running under {proc.launcher} with {proc.world_size} processes but no shared run id: "
            "set run.id=NAME (or torchrun --rdzv-id=NAME) so every rank uses the same run dir"
        )
    if proc.rank == 0:  # bad data, a vocabulary or init_from that does not fit: refused before the run dir exists
        from trainer.build import check_data_and_model

        check_data_and_model(cfg)
    run_dir, rid = resolve_run_dir(cfg.run.name, rid, cfg.run.dir, cfg.paths.runs_dir)
    # Before anything is written: a second job is refused here, with the run dir as the first job left it.
    lock = run_lock.acquire(RunDir(run_dir).lock, job_id=launcher_run_id(), stale_after_s=cfg.run.lock_stale_after_s) \
        if proc.rank == 0 else None
    with open_dict(cfg):
        cfg.run.id, cfg.run.dir = rid, str(run_dir)
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if proc.rank == 0:
        frozen = freeze_config(cfg, run_dir)
        label = launcher_label or proc.launcher or ("torchrun-local" if cfg.trainer.devices > 1 else "local")
        write_manifest(run_dir, build_manifest(
            run_id=rid, run_dir=run_dir, seed=cfg.seed, argv=[sys.executable, "-m", "trainer.train", *argv],
            extra={"launcher": label, "world_size": world},
        ))
    else:
        frozen = RunDir(run_dir).config
    return PreparedRun(run_dir, rid, frozen, proc.launcher, proc.rank, lock)


def check_required(cfg: DictConfig) -> None:
    """`???`: a value only the user can give (e.g. data.path of gpt2_124m)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (it is ??? in the config): add {missing[0]}=VALUE to the command.")


def resolved(cfg: DictConfig) -> DictConfig:
    """The config with every interpolation resolved: what the ranks see from the frozen file."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]
