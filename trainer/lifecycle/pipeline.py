"""The retrain pipeline: data check -> train (or resume) -> evaluate -> export -> promote.

Each step is the real command line tool in its own process. After each step the pipeline
records it in <run_dir>/pipeline.json (RunDir.pipeline_state) with a fingerprint of its inputs; a re-run skips every step
whose record matches and whose outputs are still there (DVC-style), so a pipeline killed between
(or during) steps continues where it stopped, and one that finished does nothing. The run dir is
keyed on the inputs: the resolved training config (run identity aside) and the data fingerprint,
so new data (or a changed setting) starts a new run, and the same inputs find the old one.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from trainer.config import DriftConfig, PromoteConfig, RegistryConfig, quality_of
from trainer.errors import UserError
from trainer.files import atomic_write_json
from trainer.tracking.run_dir import RunDir

# Exit codes for cron and CI (README "Model lifecycle").
DONE, CHECK_FAILED, PENDING, PREEMPTED = 0, 3, 4, 124


@dataclass
class Step:
    name: str
    argv: list[str]  # python -m ...
    fingerprint: str
    up_to_date: Callable[[], bool]  # outputs present and current
    ok_codes: tuple[int, ...] = (0,)
    env: dict[str, str] | None = None  # default: _child_env()


def pipeline_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the training overrides, the pipeline's own) from the command line."""
    own = [a for a in argv if a.split("=", 1)[0] == "pipeline" or a.startswith("pipeline.")]
    return [a for a in argv if a not in own], own


def run_id_for(cfg, data_fingerprint: str | None) -> str:
    """The same training inputs give the same id (and so the same run dir)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    for section in ("pipeline", "promote", "registry"):  # what happens after training does not change the run
        c.pop(section, None)
    c["run"] = {k: v for k, v in c["run"].items() if k not in ("id", "dir")}
    key = json.dumps({"config": c, "data": data_fingerprint}, sort_keys=True, default=str)
    return f"{cfg.pipeline.get('name') or 'retrain'}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def plan(cfg, train_args: list[str], run_dir: Path, data_fingerprint: str | None) -> list[Step]:
    p = cfg.pipeline
    max_steps = int(cfg.trainer.max_steps)
    model = p.model_name or cfg.run.name
    runs_dir = str(Path(cfg.paths.runs_dir).expanduser().absolute())
    promote_args = _changed(cfg, "promote", PromoteConfig) + _changed(cfg, "registry", RegistryConfig)
    q = quality_of(cfg.data)
    quality = asdict(q) if q else {}
    eval_tokens = cfg.promote.eval_max_tokens
    rd = RunDir(run_dir)
    steps = {
        "data_check": Step("data_check", ["trainer.data_check", *train_args, f"out={rd.data_check}"],
                           _hash(data_fingerprint, quality), lambda: (rd.data_check / "report.json").is_file(),
                           ok_codes=(0, CHECK_FAILED) if quality.get("on_fail") == "warn" else (0,)),
        "train": Step("train", ["trainer.train", *train_args, f"run.dir={run_dir}"], _hash(data_fingerprint, max_steps),
                      lambda: _trained(run_dir, max_steps), env=_train_env()),
        "evaluate": Step("evaluate", ["trainer.evaluate", f"run.dir={run_dir}", "split=val", "name=val",
                                      *([f"max_tokens={eval_tokens}"] if eval_tokens else [])],
                         _hash(max_steps, eval_tokens), lambda: _json(rd.eval / "val.json").get("checkpoint_step") == max_steps),
        "export": Step("export", ["trainer.export", f"run.dir={run_dir}", "format=hf"], _hash(max_steps),
                       lambda: _json(rd.export / "hf" / "trainer_export.json").get("step") == max_steps),
        "promote": Step("promote", ["trainer.promote", f"run.dir={run_dir}", f"model={model}", f"paths.runs_dir={runs_dir}",
                                    *promote_args], _hash(max_steps, model, promote_args),
                        lambda: (_json(rd.promotion).get("candidate") or {}).get("step") == max_steps,
                        ok_codes=(0, CHECK_FAILED, PENDING)),
    }
    return [steps[name] for name in p.steps]


def run_pipeline(cfg, train_args: list[str], run_dir: Path, data_fingerprint: str | None, log=print) -> int:
    """Run the steps not yet done; returns the pipeline's exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = RunDir(run_dir).pipeline_state
    state = _json(state_path) or {"run_dir": str(run_dir), "steps": {}}
    steps = plan(cfg, train_args, run_dir, data_fingerprint)
    code = DONE
    with StepSignals() as signals:
        for i, step in enumerate(steps, 1):
            record = state["steps"].get(step.name) or {}
            head = f"[{i}/{len(steps)}] {step.name}"
            if record.get("status") == "done" and record.get("fingerprint") == step.fingerprint and step.up_to_date():
                log(f"{head}: up to date (skipped; done {record.get('finished')})")
                code = record.get("exit_code", DONE)
            else:
                if signals.stop:
                    log(f"{head}: not started ({signals.stop} received); re-run the same command to continue from here")
                    return PREEMPTED
                log(f"{head}: python -m {' '.join(step.argv)}")
                started = time.time()
                code = signals.call(step.name, [sys.executable, "-m", *step.argv], env=step.env or _child_env())
                seconds = round(time.time() - started, 1)
                if code not in step.ok_codes:
                    stopped = code == PREEMPTED or signals.stop
                    log(f"{head}: {'PREEMPTED' if stopped else 'FAILED'} with exit code {code} after {seconds}s"
                        f"{f' ({signals.stop} received)' if signals.stop else ''}; re-run the same command to continue from here")
                    return PREEMPTED if stopped else code
                state["steps"][step.name] = {"status": "done", "fingerprint": step.fingerprint, "exit_code": code,
                                             "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                atomic_write_json(state_path, state)
                log(f"{head}: done in {seconds}s" + (f" (exit {code})" if code else ""))
            if cfg.pipeline.stop_after == step.name:
                log(f"pipeline.stop_after={step.name}: stopping here (re-run to continue)")
                return DONE
    return code if steps and steps[-1].name == "promote" else DONE


class StepSignals:
    """SIGTERM and SIGUSR1 sent to the pipeline's own process: SLURM (`--signal=USR1@T`, then SIGTERM at the
    time limit), Kubernetes and `kill` signal this process, but only the training step can act on them (it
    checkpoints at the next step boundary and exits PREEMPTED). Without a handler this process would die of
    the signal (exit 138 or 143, so a batch script would not requeue) and leave the step running.
    SIGUSR1 (a warning: time is short) goes to the training step only; the other steps are short and have
    nothing to save. SIGTERM goes to any running step, and the pipeline stops after it with PREEMPTED."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.stop: str | None = None  # the name of the SIGTERM received: start no further step
        self._child: subprocess.Popen | None = None
        self._step = ""
        self._previous: dict = {}

    def __enter__(self) -> "StepSignals":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def call(self, step: str, argv: list[str], env: dict[str, str]) -> int:
        self._step, self._child = step, subprocess.Popen(argv, env=env)
        try:
            return self._child.wait()
        finally:
            self._child = None

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGTERM:
            self.stop = self.stop or "SIGTERM"
        child = self._child
        if child is not None and child.poll() is None and (signum == signal.SIGTERM or self._step == "train"):
            child.send_signal(signum)


def drift_gate(cfg, log=print) -> bool:
    """pipeline.trigger=drift: True when the training data drifted from pipeline.drift_reference."""
    from omegaconf import OmegaConf

    p = cfg.pipeline
    drift_args = [f"drift.{k}={_cli_value(v)}" for k, v in OmegaConf.to_container(p.drift, resolve=True).items()
                  if asdict(DriftConfig()).get(k) != v]
    data = cfg.data
    current = [f"current={data.path}"] + ([f"file_glob={data.file_glob}"] if data.get("file_glob") else []) + \
              ([f"text_field={data.text_field}"] if data.get("text_field") else [])
    out = Path(cfg.paths.runs_dir).expanduser().absolute() / "drift_checks" / time.strftime("%Y%m%d-%H%M%S")
    argv = ["trainer.drift", f"reference={p.drift_reference}", *current, f"out={out}", *drift_args]
    log(f"[drift] python -m {' '.join(argv)}")
    code = subprocess.call([sys.executable, "-m", *argv], env=_child_env())
    if code not in (0, 3):
        raise UserError(f"the drift check failed with exit code {code} (see above)")
    return code == 3


def _changed(cfg, section: str, cls) -> list[str]:
    """section.KEY=VALUE for the settings that differ from the schema's defaults (the rest the tool knows)."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    defaults = asdict(cls())
    values = OmegaConf.to_container(cfg[section], resolve=True)
    return [f"{section}.{k}={_cli_value(v)}" for k, v in values.items() if defaults.get(k) != v]


def _trained(run_dir: Path, max_steps: int) -> bool:
    summary = _json(RunDir(run_dir).manifest).get("summary") or {}
    return summary.get("steps") == max_steps and summary.get("stopped") == "completed"


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cli_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# A SLURM task's identity. The pipeline is one task (`srun` in a --ntasks=1 job, or the batch shell); with
# these its training step would take itself for that one rank and refuse trainer.devices=8.
SLURM_TASK_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE",
                   "SLURM_TASKS_PER_NODE", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE")


def _train_env() -> dict[str, str]:
    """The training step starts trainer.devices ranks on this node itself, as a plain process does, when the
    pipeline runs as a single SLURM task (the job id stays: the run's W&B id and requeue use it)."""
    env = _child_env()
    if env.get("SLURM_NTASKS", env.get("SLURM_NPROCS")) == "1":
        for key in SLURM_TASK_VARS:
            env.pop(key, None)
    return env


def _child_env() -> dict[str, str]:
    """The steps import this checkout, whatever the working directory."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
