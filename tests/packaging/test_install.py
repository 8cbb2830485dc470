"""The package as a user installs it: `pip install .` (not editable) of the core, pinned, into a fresh venv,
then the console scripts train the default experiment (shortened) and export it from another directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
# Local state a source tree may hold that a user's copy would not (and a stale build/ would leak into the wheel).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "runs", "outputs", "multirun", "wandb", "build", "dist",
                                     "*.egg-info", "__pycache__", "*.pyc", "_prebuilt", "*.so", ".pytest_cache",
                                     "tests", "benchmarks", "docs")


def run(argv: list, cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


@pytest.mark.slow
@pytest.mark.extended  # a fresh venv and a full core install: ~6 min on 2 cores
def test_a_non_editable_core_install_trains_and_exports_from_another_directory(tmp_path, shared_cache):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAINER_CONFIG_DIR", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env, 120)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    pip = [py, "-m", "pip", "install", "-q", "--no-compile", "-c", CONSTRAINTS]  # no .pyc: saves ~1 min here
    run([*pip, "torch"], tmp_path, env, 600)
    run([*pip, source], tmp_path, env, 600)
    shutil.rmtree(source)  # nothing may still point into the source tree

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([py, "-c", "import trainer, trainer.config as c, importlib.util as u; print(trainer.__file__); "
                 "print(c.CONFIG_DIR); print(u.find_spec('deepspeed'), u.find_spec('matplotlib'))"],
                elsewhere, env, 120).stdout.split("\n")
    site = str(venv / "lib")
    assert where[0].startswith(site) and where[1].startswith(site) and where[1].endswith("trainer_configs"), where
    assert where[2] == "None None", "the core install pulled an extra"

    run_dir = tmp_path / "run"
    proc = run([bin_dir / "trainer-train", f"run.dir={run_dir}", f"paths.cache_dir={shared_cache}",
                "trainer.max_steps=10", "trainer.val_every_steps=10", "data.val_batches=2", "checkpoint.every_n_steps=10",
                "trainer.progress_bar=false"], elsewhere, {**env, "WANDB_MODE": "offline"}, 400)
    assert "run summary" in proc.stdout + proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["summary"]["steps"] == 10
    assert "name: gpt_tiny_cpu" in (run_dir / "config.yaml").read_text()  # the default experiment, from the package
    assert (run_dir / "checkpoints" / "step-00000010").is_dir()
    assert not any(elsewhere.iterdir()), "the run wrote into the working directory"

    run([bin_dir / "trainer-export", f"run.dir={run_dir}"], elsewhere, env, 300)
    assert (run_dir / "export" / "model.safetensors").stat().st_size > 0
    # csrc/ is not package data: kernels=fused is one clear error naming the editable install, exit 2.
    fused = subprocess.run([bin_dir / "trainer-train", f"run.dir={tmp_path / 'fused'}", f"paths.cache_dir={shared_cache}",
                            "kernels=fused", "trainer.max_steps=1"], cwd=elsewhere, env={**env, "WANDB_MODE": "offline"},
                           capture_output=True, text=True, timeout=300)
    assert fused.returncode == 2, fused.stdout[-2000:] + fused.stderr[-3000:]
    assert "the kernel sources (csrc/) are not at" in fused.stderr and "pip install -e ." in fused.stderr, fused.stderr
    assert "Traceback" not in fused.stderr
    for script in ("trainer-evaluate", "trainer-report", "trainer-generate", "trainer-torchrun", "trainer-slurm",
                   "trainer-k8s"):
        assert (bin_dir / script).is_file(), script
