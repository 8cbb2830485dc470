"""The reproducibility manifest: what ran, where, from which code and data. Never secrets."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.files import atomic_write_json
from trainer.tracking.run_dir import RunDir

PACKAGES = ("torch", "pytorch-lightning", "hydra-core", "omegaconf", "deepspeed", "wandb", "datasets",
            "tokenizers", "numpy", "nvidia-ml-py", "safetensors")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    if sha is None and os.environ.get("TRAINER_GIT_SHA", "unknown") != "unknown":
        # In the image there is no .git: the build recorded the commit (Dockerfile, GIT_SHA/GIT_DIRTY).
        flag = os.environ.get("TRAINER_GIT_DIRTY")
        return {"sha": os.environ["TRAINER_GIT_SHA"], "dirty": {"true": True, "false": False}.get(flag or "")}
    return {"sha": sha, "dirty": bool(dirty) if dirty is not None else None}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            pynvml.nvmlShutdown()
        except Exception:
            info["driver"] = None
    return info


def safe_argv(argv: list[str]) -> list[str]:
    """The command line with anything that looks like a secret masked."""
    out = []
    for a in argv:
        key = a.split("=", 1)[0].upper()
        out.append(f"{a.split('=', 1)[0]}=***" if "=" in a and any(w in key for w in _SECRET_WORDS) else a)
    return out


def build_manifest(*, run_id: str, run_dir: Path, seed: int, argv: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "seed": seed,
        "command": safe_argv(argv),
        "git": git_state(Path(__file__).resolve().parents[2]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "device": device_info(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(RunDir(run_dir).manifest, manifest)


def update_manifest(run_dir: Path, **fields: Any) -> None:
    path = RunDir(run_dir).manifest
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    atomic_write_json(path, data)
