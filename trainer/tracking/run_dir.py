"""Where a run lives: `RunDir`, the one owner of every file and folder name in a run directory;
how the directory is chosen; and its frozen config.

The id comes from (in order) run.id, the launcher's job id (SLURM job [+ array task],
torchrun's rendezvous id), or a fresh timestamp. A requeued or restarted job therefore
lands in the same directory and finds its checkpoints.

Components own the layout *inside* their folder (checkpoint/store.py inside checkpoints/,
observability/layout.py inside perf/); they are handed the folder, never the run dir's names.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError
from trainer.files import atomic_write_text


@dataclass(frozen=True)
class RunDir:
    """A run directory's layout. `RunDir(path).checkpoints` etc.; nothing else spells these names."""

    path: Path

    @property
    def config(self) -> Path:  # the frozen, resolved config every rank and restart starts from
        return self.path / "config.yaml"

    def older_config(self, n: int) -> Path:  # an earlier, different frozen config, kept on change
        return self.path / f"config.{n}.yaml"

    @property
    def lock(self) -> Path:  # who is running in this dir now (tracking/run_lock.py)
        return self.path / "lock.json"

    @property
    def manifest(self) -> Path:  # reproducibility manifest (tracking/manifest.py)
        return self.path / "manifest.json"

    @property
    def model_spec(self) -> Path:  # the model's _target_ and resolved kwargs: what export/generate rebuild
        return self.path / "model.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def perf(self) -> Path:  # observability records, system samples, verdicts
        return self.path / "perf"

    @property
    def logs(self) -> Path:  # rank<k>.log, NCCL flight-recorder traces
        return self.path / "logs"

    @property
    def csv(self) -> Path:  # the CSV logger's folder (metrics.csv inside)
        return self.path / "csv"

    @property
    def metrics_csv(self) -> Path:
        return self.csv / "metrics.csv"

    @property
    def wandb(self) -> Path:  # W&B's own files (offline-run-*, run-*)
        return self.path / "wandb"

    @property
    def wandb_id(self) -> Path:  # the W&B run id every restart continues
        return self.path / "wandb_id.txt"

    @property
    def wandb_artifacts(self) -> Path:  # the model artifacts this run logged (name, step, val loss, aliases)
        return self.path / "wandb_artifacts.json"

    @property
    def tensorboard(self) -> Path:  # TensorBoard event files (logger=[...,tensorboard])
        return self.path / "tensorboard"

    def logger_dir(self, name: str) -> Path:
        """The save_dir of the logger named `name` in the config: csv/ for the CSV log, the run dir itself
        for W&B (which makes its own wandb/ there), else a folder named after the logger."""
        return {"csv": self.csv, "wandb": self.path, "tensorboard": self.tensorboard}.get(name, self.path / name)

    @property
    def profiler(self) -> Path:  # torch.profiler traces and top-kernel tables
        return self.path / "profiler"

    @property
    def report(self) -> Path:  # python -m trainer.report
        return self.path / "report"

    @property
    def export(self) -> Path:  # python -m trainer.export
        return self.path / "export"

    @property
    def eval(self) -> Path:  # python -m trainer.evaluate: <name>.json per evaluation
        return self.path / "eval"

    @property
    def data_check(self) -> Path:  # the data check before training (report.json, report.html)
        return self.path / "data_check"

    @property
    def drift(self) -> Path:  # python -m trainer.drift reference=RUN: <stamp>/drift.{json,html} per comparison
        return self.path / "drift"

    @property
    def promotion(self) -> Path:  # python -m trainer.promote: the latest decision about this run's model
        return self.path / "promotion.json"

    @property
    def pipeline_state(self) -> Path:  # python -m trainer.pipeline: each step's status and input fingerprint
        return self.path / "pipeline.json"

    @property
    def reproduction(self) -> Path:  # python -m trainer.reproduce, in the reproduction's run dir: the verdict
        return self.path / "reproduce.json"

    @property
    def tokenizer(self) -> Path:  # the tokenizer's files (save_pretrained), for export and evaluation
        return self.path / "tokenizer"

    @property
    def deepspeed_config(self) -> Path:  # the generated DeepSpeed JSON, as the run used it
        return self.path / "deepspeed_config.json"

    def is_run_dir(self) -> bool:
        return self.config.is_file()


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
        path = _under(runs_dir, run_name, rid)
    ensure_writable(path)
    return path, rid


def existing_run_dir(run_name: str, run_id: str | None, run_dir: str | None, runs_dir: str) -> Path | None:
    """The run dir resolve_run_dir will choose, without creating it; None when it will make up a fresh id."""
    if run_dir:
        return Path(run_dir).expanduser().absolute()
    rid = run_id or launcher_run_id()
    return _under(runs_dir, run_name, rid) if rid else None


def _under(runs_dir: str, run_name: str, run_id: str) -> Path:
    return (Path(runs_dir).expanduser() / run_name / run_id).absolute()


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
    rd = RunDir(run_dir)
    path = rd.config
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path.exists():
        old = path.read_text()
        if old == text:
            return path
        n = 1
        while rd.older_config(n).exists():
            n += 1
        path.rename(rd.older_config(n))
    return atomic_write_text(path, text)


def load_frozen(path: Path) -> DictConfig:
    if not path.is_file():
        raise UserError(f"no frozen config at {path}")
    return OmegaConf.load(path)  # type: ignore[return-value]
