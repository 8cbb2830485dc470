"""The training entry point.

    python -m trainer.train [experiment=NAME] [group=option ...] [key=value ...]

compose (Hydra) → validate (typed schema, ranges, targets) → resolve the run dir and freeze the
config there once → launch: fit in this process, or start N local ranks under torchrun from
the frozen file, or (already under torchrun / srun / a PyTorchJob) fit in place.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from trainer.config import CONFIG_DIR, compose_config, normalize_overrides
from trainer.errors import UserError, exit_on_user_error
from trainer.tracking.run_dir import launcher_run_id

# Hydra flags that take over the run: let Hydra handle them untouched.
_HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--multirun", "-m", "--resolve",
                "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--version", "--run", "-r", "--experimental-rerun")


def refuse_if_run_dir_in_use(argv: list[str]) -> None:
    """A run dir that another living job holds is refused here, a second after start: before the checks
    of precheck, which import torch and the model's code (15 s on a loaded machine). prepare_run takes
    the lock for good later; this only looks."""
    from trainer.config import compose_unchecked
    from trainer.distributed.env import detect
    from trainer.tracking import run_lock
    from trainer.tracking.run_dir import RunDir, existing_run_dir

    if any(a.split("=")[0] in _HYDRA_FLAGS for a in argv) or detect().rank != 0:
        return
    try:
        cfg = compose_unchecked([a for a in argv if _may_place_the_run(a)])
        run = cfg.run
        path = existing_run_dir(run.name, run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id(), run.dir,
                                cfg.paths.runs_dir)
        stale_after_s = float(run.lock_stale_after_s)
    except Exception:  # noqa: BLE001 - a config precheck will explain
        return
    if path is not None:
        with exit_on_user_error():
            run_lock.check(RunDir(path).lock, job_id=launcher_run_id(), stale_after_s=stale_after_s)


def _may_place_the_run(override: str) -> bool:
    """model./data./module. keys never choose the run dir, and composing them needs their code."""
    key = override.split("=")[0].lstrip("+~")
    return "." not in key or key.split(".")[0] not in ("model", "data", "module")


def precheck(argv: list[str]) -> None:
    """Compose once before Hydra does, to turn a bad override into one clear message (exit 2)."""
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in argv):
        return
    with exit_on_user_error():
        compose_config(argv)


def with_launcher_section(argv: list[str]) -> list[str]:
    """`launcher.max_restarts=1` alone (the local ranks' restarts) selects the torchrun launcher section
    it belongs to; without a section Hydra could not set the key."""
    keys = [a.split("=")[0].lstrip("+~") for a in argv if "=" in a]
    if any(k.startswith("launcher.") for k in keys) and "launcher" not in keys:
        return ["+launcher=torchrun", *argv]
    return argv


def hydra_argv(argv: list[str]) -> list[str]:
    """The arguments as Hydra must see them: a `_target_` section's constructor argument that its
    YAML leaves out gets `++` (trainer.config.normalize_overrides); everything else, in order, as is."""
    overrides = [a for a in argv if "=" in a and a.split("=")[0] not in _HYDRA_FLAGS]
    normalized = iter(normalize_overrides(overrides))
    return [next(normalized) if a in overrides else a for a in argv]


def start_run(cfg: DictConfig, argv: list[str]) -> int:
    from trainer.build import check_local_devices
    from trainer.distributed.env import detect
    from trainer.plan import check_before_launch
    from trainer.prepare import prepare_run

    if detect().launcher is None:
        # Before the run dir is touched, and once rather than in every local rank torchrun would start.
        check_local_devices(cfg.trainer)
    if detect().rank == 0:  # under an external launcher every rank starts here; one check is enough
        check_before_launch(cfg)
    run = prepare_run(cfg, argv, run_id=_sweep_suffix(cfg.run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id()))
    try:
        from trainer.lifecycle.data_check import check_before_training

        check_before_training(cfg, run.dir, run.rank)  # data.quality: before any rank starts training
        return _launch(cfg, run)
    finally:
        run.release()  # the next point of a -m sweep may start in this process


def _launch(cfg: DictConfig, run) -> int:
    from trainer.prepare import resolved

    if run.launcher is None and cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        if cfg.trainer.num_nodes > 1:
            raise UserError(
                f"trainer.num_nodes={cfg.trainer.num_nodes} needs a cluster launcher: "
                "python -m launch.torchrun / launch.slurm / launch.k8s (see README, 'Run on a cluster')"
            )
        from trainer.config import LauncherConfig
        from trainer.distributed.spawn import relaunch_local

        print(f"run dir: {run.dir}", flush=True)
        max_restarts = (cfg.get("launcher") or LauncherConfig()).max_restarts
        return relaunch_local(run.frozen_config, cfg.trainer.devices, run.id, max_restarts=max_restarts)
    from trainer.fit import run_fit

    return run_fit(resolved(cfg), run.dir, run.id)


def _sweep_suffix(run_id: str | None) -> str | None:
    """In a -m sweep each point gets its own run dir, even with an explicit run.id."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return run_id
    num = HydraConfig.get().job.num
    from trainer.tracking.run_dir import new_run_id

    return f"{run_id}-{num}" if run_id else f"{new_run_id()}-{num}"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    argv = [a for a in sys.argv[1:] if a.split("=")[0] not in _HYDRA_FLAGS]
    with exit_on_user_error():
        code = start_run(cfg, argv)
    if code:
        sys.exit(code)


def main() -> None:
    argv = with_launcher_section(sys.argv[1:])
    refuse_if_run_dir_in_use(argv)
    precheck(argv)
    sys.argv = [sys.argv[0], *hydra_argv(argv)]
    _hydra_main()


if __name__ == "__main__":
    main()
