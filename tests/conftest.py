import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true",
                     help="also run the `extended` tier: end-to-end tests whose paths the default suite already "
                          "covers more cheaply (more strategies, more hosts, a fresh install, benchmark smoke runs)")


def pytest_collection_modifyitems(config, items):
    """The default suite (what CI runs) stays within its time budget; `--extended` runs everything."""
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended tier: run with `bash scripts/test.sh --extended`")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_inherited_wandb_service():
    """W&B records its service's address in os.environ (WANDB_SERVICE) when a test starts a run in-process;
    left there, every later test's subprocesses would share this pytest's service (and its claimed run
    ids). tests/tracking/test_wandb_runs.py tests that sharing on purpose."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One token-shard/kernels cache for the whole session, so shards are built once."""
    return tmp_path_factory.mktemp("trainer-cache")


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a module of this project as a user would, capturing output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
