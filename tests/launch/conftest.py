"""Shared helpers for the launcher tests: composing real configs once, and root-only fixtures."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launch.cli import compose_spec
from launch.config import JobSpec

ROOT = Path(__file__).resolve().parents[2]
ALLREDUCE_JOB = Path(__file__).with_name("allreduce_job.py")


@functools.lru_cache(maxsize=None)
def _spec(kind: str, overrides: tuple[str, ...]) -> JobSpec:
    return compose_spec(kind, list(overrides))


def spec_for(kind: str, *overrides: str) -> JobSpec:
    """The JobSpec the CLI would build (composes the real configs; cached per argument list)."""
    return _spec(kind, tuple(overrides))


def needs_root(*tools: str):
    """Skip unless root and every tool is on PATH (scripts/ci_system_deps.sh installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        return pytest.mark.skip(reason="needs root")
    if missing:
        return pytest.mark.skip(reason=f"{', '.join(missing)} not installed: run scripts/ci_system_deps.sh (as root)")
    return pytest.mark.root


def run_script(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
