"""Loggers: a CSV log that is always on, and W&B (offline unless the user configured a key).

W&B never stops training: if it cannot start or fails while logging, a warning is printed
once and the run carries on with the CSV log. The W&B run id lives in the run dir
(`wandb_id.txt`), so every restart of a run continues the same W&B run.
"""
from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from trainer.tracking.run_dir import RunDir

log = logging.getLogger(__name__)


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def wandb_run_id(run_dir: Path) -> str:
    """The W&B id for this run dir, created once and reused by every restart."""
    path = RunDir(run_dir).wandb_id
    if path.exists():
        return path.read_text().strip()
    rid = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        path.write_text(rid + "\n")
    return rid


def resolve_wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if wandb_has_key() else "offline"
    return mode


def build_loggers(
    run_dir: Path,
    *,
    run_name: str,
    csv: bool,
    wandb: bool,
    wandb_mode: str,
    project: str,
    entity: str | None,
    tags: list[str],
    config: dict[str, Any],
) -> list[Logger]:
    loggers: list[Logger] = []
    if csv:
        # version="" keeps metrics.csv directly under <run_dir>/csv/ across restarts.
        csv_dir = RunDir(run_dir).csv
        loggers.append(_resumable_csv_logger(save_dir=str(csv_dir.parent), name=csv_dir.name, version=""))
    mode = resolve_wandb_mode(wandb_mode)
    if wandb and mode != "disabled":
        wb = _make_wandb(run_dir, run_name=run_name, mode=mode, project=project, entity=entity, tags=tags, config=config)
        if wb is not None:
            loggers.append(wb)
    return loggers


def _resumable_csv_logger(**kwargs) -> CSVLogger:
    """Lightning's CSVLogger deletes metrics.csv when it starts in a non-empty directory; a resumed run
    appends to it instead, so the file holds the whole run (a step re-run after a crash appears twice:
    readers take the last row of a step)."""
    import csv

    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class AppendingExperimentWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    class ResumableCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
            return self._experiment

    return ResumableCSVLogger(**kwargs)


def _make_wandb(run_dir: Path, *, run_name: str, mode: str, project: str, entity: str | None, tags: list[str], config):
    try:
        from pytorch_lightning.loggers import WandbLogger
    except Exception as e:  # wandb missing or broken: never stop training for it
        log.warning("W&B is unavailable (%s); continuing with the CSV log only", e)
        return None

    class SafeWandbLogger(WandbLogger):
        """WandbLogger whose failures turn into one warning instead of a crashed run."""

        _broken = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._wandb_init.pop("anonymous", None)  # Lightning passes a deprecated key W&B warns about

        def _guard(self, fn, *args, **kwargs):
            if self._broken:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any W&B failure is non-fatal by design
                self._broken = True
                log.warning("W&B logging failed (%s); continuing with the CSV log only", e)
                return None

        @rank_zero_only
        def log_metrics(self, metrics, step=None):
            self._guard(super().log_metrics, metrics, step)

        @rank_zero_only
        def log_hyperparams(self, params, *args, **kwargs):
            self._guard(super().log_hyperparams, params, *args, **kwargs)

        @rank_zero_only
        def finalize(self, status):
            self._guard(super().finalize, status)

    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")  # our console output stays ours
    if mode != "online":
        # W&B (0.31) builds an OpenTelemetry exporter at the first logged metric even offline: ~160 ms of
        # imports on the training thread, then a thread that posts its own telemetry to W&B's servers
        # every 60 s. An offline run sends nothing.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    try:
        return SafeWandbLogger(
            project=project,
            entity=entity,
            name=f"{run_name}/{run_dir.name}",
            id=wandb_run_id(run_dir),
            resume="allow",
            save_dir=str(run_dir),
            mode=mode,
            tags=list(tags),
            config=config,
            settings=_wandb_settings(),
        )
    except Exception as e:  # noqa: BLE001
        log.warning("W&B could not start (%s); continuing with the CSV log only", e)
        return None


def _wandb_settings():
    import wandb

    # No code or git diff upload, no stdout capture: the run dir already holds what matters.
    return wandb.Settings(save_code=False, disable_git=True, console="off", x_disable_stats=False)


def wandb_sync_hint(run_dir: Path) -> str | None:
    runs = sorted(RunDir(run_dir).wandb.glob("offline-run-*"))
    if not runs:
        return None
    return f"wandb sync {runs[-1]}"
