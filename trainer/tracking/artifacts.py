"""W&B model artifacts and evaluation summaries, on the training run's own W&B run.

An HF export (and, with logger.wandb.log_checkpoint=true, the final checkpoint) is logged as a new
version of the artifact `model-<W&B run id>` (type `model`), as an output of that run: the
lineage W&B shows. Aliases: `latest` and `step-<N>` always, `best` when its validation loss
(from `<run_dir>/eval/*.json` or the run summary) is the lowest of the versions logged so far
(RunDir.wandb_artifacts keeps that record; without any loss the newest is best, as
in Lightning's WandbLogger without a monitor). Offline the artifact is written into the offline
run (files staged under $WANDB_DATA_DIR) and uploads with `wandb sync`. W&B never stops an
export or an evaluation: a failure is one warning.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from trainer.files import atomic_write_json

from trainer.tracking.loggers import resolve_wandb_mode
from trainer.tracking.run_dir import RunDir, load_frozen

log = logging.getLogger(__name__)


def artifact_name(wandb_id: str) -> str:
    return f"model-{wandb_id}"


@contextlib.contextmanager
def resumed_run(run_dir: Path) -> Iterator[Any]:
    """The run dir's W&B run, resumed under its id with the run's logger settings; None when the run has
    no W&B run (logger.wandb=false, mode disabled) or W&B cannot start."""
    from trainer.tracking.loggers import wandb_settings, wandb_target

    target = wandb_target(run_dir)
    if target is None:
        yield None
        return
    run = None
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        run = wandb.init(id=target["id"], resume="allow", project=target["project"], entity=target["entity"],
                         group=target["group"], mode=target["mode"], dir=str(run_dir), settings=wandb_settings(),
                         reinit="create_new")
    except Exception as e:  # noqa: BLE001 - W&B is never worth failing for
        log.warning("W&B could not start (%s); nothing logged to W&B", e)
    try:
        yield run
    finally:
        if run is not None:
            try:
                run.finish()
            except Exception as e:  # noqa: BLE001
                log.warning("W&B did not finish cleanly (%s)", e)


def log_summary(run_dir: Path, values: dict[str, Any]) -> bool:
    """Set keys of the run's W&B summary; True if logged."""
    with resumed_run(run_dir) as run:
        if run is None:
            return False
        try:
            run.summary.update(values)
            return True
        except Exception as e:  # noqa: BLE001
            log.warning("W&B summary not updated (%s)", e)
            return False


def log_export_artifact(run_dir: Path, path: Path, step: int) -> list[str] | None:
    """Log an export directory as the next version of model-<id>; returns its aliases (None: not logged)."""
    with resumed_run(run_dir) as run:
        if run is None:
            return None
        return log_model_artifact(run, run_dir, path, kind="export", step=step)


def log_model_artifact(run, run_dir: Path, path: Path, *, kind: str, step: int) -> list[str] | None:
    """Log a directory as a version of model-<run.id> from a live W&B run."""
    try:
        import wandb

        record = _read_record(run_dir)
        loss = val_loss_at(run_dir, step)
        known = [e["val_loss"] for e in record if e.get("val_loss") is not None]
        best = all(loss <= k for k in known) if loss is not None else not known
        aliases = ["latest", f"step-{step}"] + (["best"] if best else [])
        art = wandb.Artifact(artifact_name(run.id), type="model",
                             metadata={"kind": kind, "step": step, "val_loss": loss, "source": Path(path).name})
        art.add_dir(str(path))
        run.log_artifact(art, aliases=aliases)
        record.append({"name": artifact_name(run.id), "kind": kind, "step": step, "val_loss": loss, "aliases": aliases})
        atomic_write_json(RunDir(run_dir).wandb_artifacts, record)
        return aliases
    except Exception as e:  # noqa: BLE001
        log.warning("W&B artifact not logged (%s)", e)
        return None


def log_checkpoint_artifact(loggers: list, run_dir: Path, step: int) -> list[str] | None:
    """From the training process, after fit: the checkpoint of `step` as a version of model-<id>."""
    from trainer.checkpoint.store import step_dir_name

    for logger in loggers:
        if type(logger).__name__.endswith("WandbLogger") and not getattr(logger, "_broken", False):
            return log_model_artifact(logger.experiment, run_dir, RunDir(run_dir).checkpoints / step_dir_name(step),
                                      kind="checkpoint", step=step)
    return None


def val_loss_at(run_dir: Path, step: int) -> float | None:
    """The validation loss the run has for this step: an evaluation of the val split, else the training summary."""
    for path in sorted(RunDir(run_dir).eval.glob("*.json")):
        result = _read_json(path)
        if (result.get("checkpoint_step") == step and result.get("split") == "val" and result.get("own_data")
                and result.get("loss") is not None):
            return float(result["loss"])
    summary = _read_json(RunDir(run_dir).manifest).get("summary") or {}
    if summary.get("steps") == step and summary.get("final_val_loss") is not None:
        return float(summary["final_val_loss"])
    return None


def _read_record(run_dir: Path) -> list[dict]:
    data = _read_json(RunDir(run_dir).wandb_artifacts)
    return data if isinstance(data, list) else []


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
