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


def precheck(argv: list[str]) -> None:
    """Compose once before Hydra does, to turn a bad override into one clear message (exit 2)."""
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in argv):
        return
    with exit_on_user_error():
        compose_config(argv)


def hydra_argv(argv: list[str]) -> list[str]:
    """The arguments as Hydra must see them: a `_target_` section's constructor argument that its
    YAML leaves out gets `++` (trainer.config.normalize_overrides); everything else, in order, as is."""
    overrides = [a for a in argv if "=" in a and a.split("=")[0] not in _HYDRA_FLAGS]
    normalized = iter(normalize_overrides(overrides))
    return [next(normalized) if a in overrides else a for a in argv]


def start_run(cfg: DictConfig, argv: list[str]) -> int:
    from trainer.distributed.env import detect
    from trainer.plan import check_before_launch
    from trainer.prepare import prepare_run, resolved

    if detect().rank == 0:  # under an external launcher every rank starts here; one check is enough
        check_before_launch(cfg)

    run = prepare_run(cfg, argv, run_id=_sweep_suffix(cfg.run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id()))
    if run.launcher is None and cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        if cfg.trainer.num_nodes > 1:
            raise UserError(
                f"trainer.num_nodes={cfg.trainer.num_nodes} needs a cluster launcher: "
                "python -m launch.torchrun / launch.slurm / launch.k8s (see README, 'Run on a cluster')"
            )
        from trainer.distributed.spawn import relaunch_local

        print(f"run dir: {run.dir}", flush=True)
        return relaunch_local(run.frozen_config, cfg.trainer.devices, run.id)
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
    precheck(sys.argv[1:])
    sys.argv = [sys.argv[0], *hydra_argv(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
