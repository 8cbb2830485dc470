"""Shared, session-scoped fixtures for the lifecycle tests: trained candidates and an initialized registry."""
from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lifecycle.runs import train


@pytest.fixture(scope="session")
def candidates(tmp_path_factory, shared_cache) -> dict[str, Path]:
    """Tiny GPT runs of known order on the same validation tokens: worst (2 steps) < weak (4) < good (20) < best (40)."""
    root = tmp_path_factory.mktemp("candidates")
    return {name: train(root / name, shared_cache, steps) for name, steps in
            (("worst", 2), ("weak", 4), ("good", 20), ("best", 40))}


@pytest.fixture(scope="session")
def _registry_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite registry, created once (MLflow's schema migrations take seconds)."""
    from trainer.lifecycle.registry import Registry

    root = tmp_path_factory.mktemp("registry-template")
    Registry.open(None, root)
    return root / "registry" / "mlflow.db"


@pytest.fixture
def runs_dir(tmp_path, _registry_template) -> Path:
    """A runs dir holding a fresh copy of the empty registry."""
    rd = tmp_path / "runs"
    (rd / "registry").mkdir(parents=True)
    shutil.copy(_registry_template, rd / "registry" / "mlflow.db")
    return rd


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call(main, *args: str) -> Result:
    """A CLI's main() in this process (same code path as `python -m`, without paying the imports again)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())
