"""The training entry point.

    python -m trainer.train [--config-dir DIR] [experiment=NAME] [group=option ...] [key=value ...]

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

from trainer.config import CONFIG_DIR, compose_config, config_dir_overrides, normalize_overrides, split_config_dir
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
    """Compose once before Hydra does, to turn a bad override into one clear message (exit 2).
    `--config-dir DIR` (your configs, searched after the shipped ones) is composed with."""
    with exit_on_user_error():
        dirs, rest = split_config_dir(argv)
        if any(a.split("=")[0] in _HYDRA_FLAGS for a in rest):
            return
        compose_config(rest, config_dirs=dirs)


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
    dirs, rest = split_config_dir(argv)
    overrides = [a for a in rest if "=" in a and a.split("=")[0] not in _HYDRA_FLAGS]
    searchpath = config_dir_overrides(dirs)
    normalized = iter(normalize_overrides([*searchpath, *overrides])[len(searchpath):])
    return [next(normalized) if a in overrides else a for a in argv]


def start_run(cfg: DictConfig, argv: list[str]) -> tuple[int, Path]:
    """Run (or start the ranks of) one training run; (exit code, run dir)."""
    from trainer.build import check_local_devices
    from trainer.config import complete_target_sections
    from trainer.distributed.env import detect
    from trainer.plan import check_before_launch
    from trainer.prepare import check_required, prepare_run

    # The constructors' defaults first (`data.seq_len: ${model.seq_len}` resolves only once model.seq_len is
    # filled), then a missing value before anything else: the other checks depend on it (gpt2_124m's
    # data.path on a CPU host would otherwise get the no-GPU error).
    complete_target_sections(cfg)
    check_required(cfg)
    if detect().launcher is None:
        # Before the run dir is touched, and once rather than in every local rank torchrun would start.
        check_local_devices(cfg.trainer)
    if detect().rank == 0:  # under an external launcher every rank starts here; one check is enough
        check_before_launch(cfg)
    group = _sweep_group(cfg)
    if group:
        with open_dict(cfg):
            cfg.run.group = group
    run = prepare_run(cfg, argv, run_id=_sweep_suffix(cfg.run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id()))
    try:
        from trainer.lifecycle.data_check import check_before_training

        check_before_training(cfg, run.dir, run.rank)  # data.quality: before any rank starts training
        return _launch(cfg, run), run.dir
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
        return relaunch_local(run.frozen_config, cfg.trainer.devices, run.id, max_restarts=max_restarts,
                              lock_token=run.lock.holder.token if run.lock else None)
    from trainer.fit import run_fit

    return run_fit(resolved(cfg), run.dir, run.id)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_group(cfg: DictConfig) -> str | None:
    """In a -m sweep without run.group: one W&B group for the sweep's runs, named after its folder."""
    if cfg.run.get("group") or not _multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return f"{cfg.run.name}-sweep-{Path(HydraConfig.get().sweep.dir).name}"


def objective(run_dir: Path, key: str) -> float:
    """A sweep's value for the sweeper (hparams_search=optuna): `key` of the run summary (manifest.json)."""
    import json

    from trainer.tracking.run_dir import RunDir

    summary = json.loads(RunDir(run_dir).manifest.read_text()).get("summary") or {}
    if summary.get(key) is None:
        raise UserError(f"run.objective={key!r}: the run summary has no such value; it has: "
                        f"{', '.join(k for k, v in summary.items() if isinstance(v, (int, float)))}")
    return float(summary[key])


def _sweep_suffix(run_id: str | None) -> str | None:
    """In a -m sweep each point gets its own run dir, even with an explicit run.id."""
    from hydra.core.hydra_config import HydraConfig

    if not _multirun():
        return run_id
    num = HydraConfig.get().job.num
    from trainer.tracking.run_dir import new_run_id

    return f"{run_id}-{num}" if run_id else f"{new_run_id()}-{num}"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    argv = [a for a in split_config_dir(sys.argv[1:])[1] if a.split("=")[0] not in _HYDRA_FLAGS]
    with exit_on_user_error():
        code, run_dir = start_run(cfg, argv)
        if code:
            sys.exit(code)
        return objective(run_dir, cfg.run.objective) if cfg.run.get("objective") else None


def main() -> None:
    argv = with_launcher_section(sys.argv[1:])
    refuse_if_run_dir_in_use(argv)
    precheck(argv)
    with exit_on_user_error():
        sys.argv = [sys.argv[0], *hydra_argv(argv)]
    _hydra_main()


if __name__ == "__main__":
    main()
