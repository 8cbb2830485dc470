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

from trainer.config import CONFIG_DIR, compose_config, validate
from trainer.errors import UserError, exit_on_user_error

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


def start_run(cfg: DictConfig, argv: list[str]) -> int:
    from trainer.distributed.env import detect
    from trainer.tracking.manifest import build_manifest, write_json
    from trainer.tracking.run_dir import freeze_config, launcher_run_id, resolve_run_dir

    validate(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))  # `???`: a value only the user can give (e.g. data.path)
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (it is ??? in the config): add {missing[0]}=VALUE to the command.")
    if cfg.model.get("init_from"):
        _check_init_from(cfg)
    proc = detect()
    run_id = cfg.run.id or os.environ.get("TRAINER_RUN_ID") or launcher_run_id()
    if proc.launcher and proc.world_size > 1 and not (run_id or cfg.run.dir):
        raise UserError(
            f"running under {proc.launcher} with {proc.world_size} processes but no shared run id: "
            "set run.id=NAME (or torchrun --rdzv-id=NAME) so every rank uses the same run dir"
        )
    run_id = _sweep_suffix(run_id)
    run_dir, run_id = resolve_run_dir(cfg.run.name, run_id, cfg.run.dir, cfg.paths.runs_dir)
    with open_dict(cfg):
        cfg.run.id, cfg.run.dir = run_id, str(run_dir)
    if proc.rank == 0:
        frozen = freeze_config(cfg, run_dir)
        write_json(run_dir / "manifest.json", build_manifest(
            run_id=run_id, run_dir=run_dir, seed=cfg.seed, argv=[sys.executable, "-m", "trainer.train", *argv],
            extra={"launcher": proc.launcher or ("torchrun-local" if cfg.trainer.devices > 1 else "local"),
                   "world_size": cfg.trainer.devices * cfg.trainer.num_nodes},
        ))
    else:
        frozen = run_dir / "config.yaml"
    from trainer.lifecycle.data_check import check_before_training

    check_before_training(cfg, run_dir, proc.rank)  # data.quality: before any rank starts training

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    if proc.launcher is None and world > 1:
        if cfg.trainer.num_nodes > 1:
            raise UserError(
                f"trainer.num_nodes={cfg.trainer.num_nodes} needs a cluster launcher: "
                "python -m launch.torchrun / launch.slurm / launch.k8s (see README, 'Run on a cluster')"
            )
        from trainer.distributed.spawn import relaunch_local

        print(f"run dir: {run_dir}", flush=True)
        return relaunch_local(frozen, cfg.trainer.devices, run_id)
    from trainer.fit import run_fit

    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return run_fit(resolved, run_dir, run_id)  # type: ignore[arg-type]


def _check_init_from(cfg: DictConfig) -> None:
    """A fine-tuning start whose checkpoint cannot load fails here, before the run dir exists."""
    from hydra.utils import instantiate

    from trainer.models.llama_hf import check_hf_shapes, gpt_config_of

    path = Path(cfg.model.init_from).expanduser().absolute()
    with open_dict(cfg):
        cfg.model.init_from = str(path)  # frozen absolute, like every path of a run
    model = OmegaConf.to_container(cfg.model, resolve=True)
    vocab = None
    if model.get("vocab_size") is None:  # from the data's tokenizer, as the build step fills it
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        vocab = datamodule.vocab_size
    check_hf_shapes(path, gpt_config_of(model, vocab))


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
    _hydra_main()


if __name__ == "__main__":
    main()
