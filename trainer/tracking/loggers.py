"""Loggers: the CSV log and W&B as `_target_`s for configs/logger/, and what keeps logging honest.

- `CSVLogger`: <run_dir>/csv/metrics.csv, appended to across restarts (Lightning's would delete it).
- `WandbLogger`: Lightning's, made safe. Offline unless an API key is configured for the server it
  would talk to (WANDB_BASE_URL's host); `WANDB_MODE` wins over that guess. A W&B failure never
  ends training: if it cannot start online (a bad key, an unreachable server: init is bounded by
  `init_timeout_s`) or fails while logging, it says so once, naming the cause, and logs offline for
  the rest of the run, into the same run id, for a later `wandb sync`.
- Both log on the global step, so every restart of a run continues one step axis (W&B's `_step`
  is the global step, not a per-process counter). `LoggerFlush` commits each step's W&B row once
  the next step starts, and after each checkpoint waits (at most about `flush_interval_s`) until W&B
  has written the rows up to the checkpoint's own step to its run file, as the CSV log has: a
  kill -9 then loses no row that a resume from that checkpoint would not log again. (W&B's service
  buffers its run file and writes it every `flush_interval_s`, 15 s by W&B's default; a killed job
  took the unwritten rows with it.)

The W&B run id lives in the run dir (`RunDir.wandb_id`), so every restart continues the same run.
"""
from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from lightning_fabric.loggers.logger import _DummyExperiment
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from trainer.files import atomic_write_text
from trainer.tracking.run_dir import RunDir

log = logging.getLogger(__name__)
WANDB_SERVICE_ENV = "WANDB_SERVICE"  # W&B's address of a running service to share (wandb.env.SERVICE)

WANDB_MODES = ("auto", "offline", "online", "disabled")
DEFAULT_PROJECT = "trainer"  # when neither logger.wandb.project nor $WANDB_PROJECT is set
PUBLIC_BASE_URL = "https://api.wandb.ai"


# --------------------------------------------------------------------------- W&B mode and key
def wandb_base_url(env: Mapping[str, str] = os.environ) -> str:
    return env.get("WANDB_BASE_URL") or PUBLIC_BASE_URL


def wandb_has_key(env: Mapping[str, str] = os.environ) -> bool:
    """An API key for the server W&B would talk to: $WANDB_API_KEY, or a netrc entry for its host
    (what `wandb login --host URL` writes, for the public and self-hosted servers alike)."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(wandb_base_url(env)).hostname
    try:
        auth = netrc.netrc(env.get("NETRC") or None).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str, env: Mapping[str, str] = os.environ) -> str:
    """online | offline | disabled. `auto`: $WANDB_MODE when set, else online with a key configured,
    else offline. An explicit mode in the config is used as it is."""
    if mode != "auto":
        return mode
    env_mode = (env.get("WANDB_MODE") or "").strip().lower()
    if env_mode:
        return {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
    return "online" if wandb_has_key(env) else "offline"


def wandb_run_id(run_dir: Path) -> str:
    """The W&B id for this run dir, created once and reused by every restart."""
    path = RunDir(run_dir).wandb_id
    if path.exists():
        return path.read_text().strip()
    rid = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        atomic_write_text(path, rid + "\n")
    return rid


def wandb_target(run_dir: Path) -> dict[str, Any] | None:
    """How a later tool (evaluate, export) attaches to this run dir's W&B run: {id, project, entity, group,
    tags, mode, dir} from the frozen config's `logger.wandb` entry; None when the run has none (off,
    disabled) or never started one."""
    from omegaconf import OmegaConf

    rd = RunDir(Path(run_dir))
    if not rd.wandb_id.is_file() or not rd.config.is_file():
        return None
    node = (OmegaConf.load(rd.config).get("logger") or {}).get("wandb")
    if not node:
        return None
    mode = resolve_wandb_mode(node.get("mode", "auto"))
    if mode == "disabled":
        return None
    return {"id": rd.wandb_id.read_text().strip(), "project": node.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            "entity": node.get("entity"), "group": node.get("group"), "tags": list(node.get("tags") or []),
            "mode": mode, "dir": str(rd.path)}


def wandb_sync_hint(run_dir: Path) -> str | None:
    """The command that uploads this run's offline W&B data (every session of it), or None."""
    folder = RunDir(run_dir).wandb
    runs = sorted(folder.glob("offline-run-*"))
    if not runs:
        return None
    return f"wandb sync {runs[0]}" if len(runs) == 1 else f"wandb sync {folder}/offline-run-*"


def wandb_settings(init_timeout_s: float | None = None, flush_interval_s: float | None = None):
    import wandb

    # No code or git diff upload, no stdout capture: the run dir already holds what matters.
    extra: dict[str, Any] = {"init_timeout": float(init_timeout_s)} if init_timeout_s else {}
    if flush_interval_s:
        extra["x_transaction_log_flush_interval"] = float(flush_interval_s)
    return wandb.Settings(save_code=False, disable_git=True, console="off", x_disable_stats=False, **extra)


def _cause(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


# --------------------------------------------------------------------------- the loggers
class CSVLogger(_LightningCSVLogger):
    """metrics.csv directly in `save_dir` (the run's csv/ folder), appended to by every restart.

    Lightning's CSVLogger deletes metrics.csv when it starts in a non-empty directory; a resumed run
    appends instead, so the file holds the whole run (a step re-run after a crash appears twice:
    readers take the last row of a step)."""

    def __init__(self, save_dir: str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100):
        if save_dir is None:
            raise ValueError("CSVLogger needs save_dir (the trainer fills it with <run_dir>/csv)")
        super().__init__(save_dir=save_dir, name="", version="", prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def _appending_writer_class():
    import csv

    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class AppendingExperimentWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                    self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    return AppendingExperimentWriter


_AppendingExperimentWriter = _appending_writer_class()


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that never ends a run, logs on the global step, and tells where its data is.

    Arguments left None are W&B's own defaults (project: $WANDB_PROJECT, else "trainer"; entity:
    $WANDB_ENTITY or your default entity); `save_dir`, `name`, `id`, `group` and `config` are filled by
    the trainer from the run. `mode`: auto | online | offline | disabled (see resolve_wandb_mode).
    `job_type`: train. Evaluate and export make no W&B run of their own: they resume this run (its id, from
    the run dir) and log into it, the eval summary and the HF export artifact (tracking/artifacts.py), so one
    W&B run holds a model's whole history. `init_timeout_s` bounds the online start.
    `flush_interval_s`: how often W&B's service writes the run file (the most a checkpoint waits for it).
    `log_checkpoint`: also log the final checkpoint as a model artifact (exports always are).
    """

    def __init__(
        self,
        save_dir: str | None = None,
        *,
        project: str | None = None,
        entity: str | None = None,
        mode: str = "auto",
        group: str | None = None,
        job_type: str = "train",
        tags: Sequence[str] = (),
        notes: str | None = None,
        name: str | None = None,
        id: str | None = None,
        config: dict | None = None,
        init_timeout_s: float = 60.0,
        flush_interval_s: float = 1.0,
        log_checkpoint: bool = False,
    ):
        self.log_checkpoint = log_checkpoint
        self.check_config(mode=mode, init_timeout_s=init_timeout_s, flush_interval_s=flush_interval_s)
        init: dict[str, Any] = {"group": group, "job_type": job_type, "tags": list(tags), "notes": notes,
                                "config": config, "resume": "allow"}
        if entity:  # None: W&B's own choice ($WANDB_ENTITY, your default entity)
            init["entity"] = entity
        super().__init__(name=name, save_dir=save_dir or ".", id=id,
                         project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                         **{k: v for k, v in init.items() if v is not None})
        self._wandb_init.pop("anonymous", None)  # Lightning passes a deprecated key W&B warns about
        self._mode = resolve_wandb_mode(mode)
        self._init_timeout_s, self._flush_interval_s = init_timeout_s, flush_interval_s
        self._off = self._mode == "disabled"  # no W&B at all (disabled, or even offline failed)
        self._pending_step: int | None = None  # a row logged but not yet committed
        self._restarted = False  # started over offline after a failure while logging

    @classmethod
    def check_config(cls, mode: str = "auto", init_timeout_s: float = 60.0, flush_interval_s: float = 1.0, **_) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        for key, value in (("init_timeout_s", init_timeout_s), ("flush_interval_s", flush_interval_s)):
            if value is None or value <= 0:
                raise ValueError(f"logger.wandb.{key} must be positive, got {value}")

    @property
    def mode(self) -> str:
        """The mode in effect now: online, offline (possibly after a failure), or disabled."""
        return "disabled" if self._off else self._mode

    # ------------------------------------------------------------------ start, and falling back
    @property
    @rank_zero_experiment
    def experiment(self):
        """The W&B run (Lightning touches it at set-up); a no-op stand-in once W&B is off."""
        if self._experiment is None:
            self._experiment = _DummyExperiment() if self._off else self._start()
        return self._experiment

    def _start(self):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")  # our console output stays ours
        if self._mode != "online":
            # W&B (0.31) builds an OpenTelemetry exporter at the first logged metric even offline: ~160 ms of
            # imports on the training thread, then a thread that posts its own telemetry to W&B's servers
            # every 60 s. An offline run sends nothing.
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        first = self._mode
        try:
            return self._init(wandb, first)
        except Exception as e:  # noqa: BLE001 - a bad key, no route, a server error: all mean "go offline"
            if first == "online":
                self._warn_offline(f"W&B could not start online ({_cause(e)})")
            elif os.environ.get(WANDB_SERVICE_ENV):
                # A shared service can refuse a run its earlier process held when it was killed ("run ID
                # ... is in use"): the same local run, so no warning; the retry gets a service of its own.
                log.info("W&B's shared service (%s) refused this run (%s); starting one of its own",
                         WANDB_SERVICE_ENV, _cause(e))
            else:
                return self._give_up(e)
            self._reset(wandb)
        try:
            return self._init(wandb, "offline")
        except Exception as e:  # noqa: BLE001 - W&B itself broken: the other loggers carry on
            return self._give_up(e)

    def _give_up(self, e: BaseException) -> _DummyExperiment:
        self._off = True
        self._warn(f"W&B could not start even offline ({_cause(e)}); continuing without W&B")
        return _DummyExperiment()

    @staticmethod
    def _reset(wandb) -> None:
        """End W&B's service: a failed online start leaves the run id claimed there, and an offline run
        with that id would be refused ("run ID ... is in use"). What the online run wrote stays in its
        local run file (wandb/run-*), for `wandb sync` too.

        A shared service (its address in $WANDB_SERVICE: `wandb beta core start`, or inherited from a parent
        process that used W&B) outlives this process's teardown and keeps the id claimed, or may be gone
        with its parent: this process stops using it and the retry starts a service of its own."""
        try:
            wandb.teardown()
        except Exception as e:  # noqa: BLE001
            log.debug("W&B teardown: %s", _cause(e))
        os.environ.pop(WANDB_SERVICE_ENV, None)

    def _init(self, wandb, mode: str):
        settings = wandb_settings(self._init_timeout_s if mode == "online" else None,
                                  flush_interval_s=self._flush_interval_s)
        # finish_previous: an earlier run of this process (a -m sweep's previous point) is finished first
        run = wandb.init(**{**self._wandb_init, "mode": mode}, reinit="finish_previous", settings=settings)
        self._mode = mode
        return run

    def _warn_offline(self, why: str) -> None:
        self._mode = "offline"
        where = RunDir(Path(self._wandb_init.get("dir") or ".")).wandb  # save_dir is the run dir (RunDir.logger_dir)
        self._warn(f"{why}; logging to W&B offline for the rest of this run ({where}; upload later with wandb sync)")

    @staticmethod
    def _warn(message: str) -> None:
        log.warning(message)  # once per change of state: online -> offline -> off, each happens at most once

    def _guarded(self, fn) -> None:
        """Run a W&B call. On a failure (a lost server, W&B's own service gone) start over offline, once,
        with the same run id, and retry there; if that fails too, give W&B up for this run."""
        if self._off:
            return
        try:
            fn()
            return
        except Exception as e:  # noqa: BLE001 - W&B never stops training
            if self._restarted or isinstance(self._experiment, _DummyExperiment):
                self._off = True
                self._warn(f"W&B logging failed again ({_cause(e)}); continuing without W&B")
                return
            self._warn_offline(f"W&B logging failed ({_cause(e)})")
        self._restarted = True
        try:
            import wandb

            self._reset(wandb)  # not finish(): it would wait on whatever just failed
            self._experiment = self._init(wandb, "offline")
            fn()
        except Exception as e:  # noqa: BLE001
            self._off = True
            log.warning("W&B offline failed too (%s); continuing without W&B", _cause(e))

    # ------------------------------------------------------------------ what Lightning calls
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from lightning_fabric.utilities.logger import _add_prefix

        metrics = _add_prefix(dict(metrics), self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            self._guarded(lambda: self.experiment.log(metrics))
            return
        # The row of `step` collects every log at that step (train, validation, perf) and is committed
        # when a later step is logged, or by commit() when the next step starts.
        self._guarded(lambda: self.experiment.log(metrics, step=step))
        self._pending_step = step

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self._guarded(lambda: _LightningWandbLogger.log_hyperparams(self, params, *args, **kwargs))

    @rank_zero_only
    def commit(self, before: int | None = None) -> None:
        """Close the open row (only if its step is below `before`, the row still being written): W&B keeps
        a step's row open until it is committed, and a row still open when the process is killed is lost."""
        step = self._pending_step
        if step is None or self._experiment is None or (before is not None and step >= before):
            return
        self._pending_step = None
        self._guarded(lambda: self.experiment.log({}, step=step, commit=True))

    @rank_zero_only
    def flush(self) -> None:
        """Wait until W&B's service has written what was committed to the run file (it writes every
        flush_interval_s): after a round trip through the service, the file's next growth. Bounded."""
        if self._off or self._experiment is None or isinstance(self._experiment, _DummyExperiment):
            return
        import time

        try:
            path = Path(self._experiment.settings.sync_file)
            before = path.stat().st_size if path.exists() else 0
            self._experiment._interface.deliver_history_step().wait_or(timeout=self._flush_interval_s + 5)
            deadline = time.monotonic() + self._flush_interval_s + 2
            while time.monotonic() < deadline and (path.stat().st_size if path.exists() else 0) == before:
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - private W&B calls: never worth a crash
            log.debug("W&B flush not confirmed: %s", _cause(e))

    @rank_zero_only
    def update_summary(self, values: Mapping[str, Any]) -> None:
        self._guarded(lambda: self.experiment.summary.update(dict(values)))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # Commit the last row; the run is finished at exit (or by the next run in this process), so
        # artifacts can still be logged to it after fit.
        self.commit()


# --------------------------------------------------------------------------- flushing at step and checkpoint
class LoggerFlush(pl.Callback):
    """Commits the finished steps' W&B rows when a new step starts; after a checkpoint, makes every
    logger's rows up to the checkpoint's own step durable before the next step (CSV: written; W&B:
    committed and written to its run file).

    Lightning logs step k's row (train, then validation, both at step k) after the optimizer step that
    makes global_step k + 1, and after the checkpoint saved at global_step k + 1: the row of step k is
    complete when the next step starts, and a resume from that checkpoint starts at step k + 1."""

    def __init__(self) -> None:
        self._step = -1
        self._checkpointed = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self._step:
            return  # inside an accumulation window
        self._step = trainer.global_step
        _commit(trainer.loggers, before=trainer.global_step)
        if self._checkpointed:
            self._checkpointed = False
            _flush(trainer.loggers)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint) -> None:
        self._checkpointed = True

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        _commit(trainer.loggers)
        _flush(trainer.loggers)


def log_summary(loggers: Sequence[Any], summary: Mapping[str, Any]) -> None:
    """The end-of-run summary (steps, tokens/s, final losses ...) into each logger that keeps one (W&B),
    under run/..."""
    values = {f"run/{k}": v for k, v in summary.items() if isinstance(v, (int, float, str))}
    for logger in loggers:
        update = getattr(logger, "update_summary", None)
        if callable(update):
            update(values)


def _flush(loggers: Sequence[Any]) -> None:
    for logger in loggers:
        try:
            flush = getattr(logger, "flush", None)
            flush() if callable(flush) else logger.save()
        except Exception as e:  # noqa: BLE001 - a logger never stops training
            log.warning("logger %s not flushed: %s", type(logger).__name__, _cause(e))


def _commit(loggers: Sequence[Any], before: int | None = None) -> None:
    for logger in loggers:
        commit = getattr(logger, "commit", None)
        if callable(commit):
            commit(before)
