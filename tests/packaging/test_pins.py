"""The pinned dependency set, the torch-build switch and where the configs are found: the parts of an
install that need no new environment to check."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{CONSTRAINTS.name}: not an exact pin: {line!r}"
            out[canonicalize_name(name)] = version
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_pinned_within_its_bounds():
    """A dependency added to pyproject.toml without regenerating the pins (bash scripts/lock.sh) fails here."""
    pinned = pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is in pyproject.toml but not in {CONSTRAINTS}: run bash scripts/lock.sh"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{req.name}=={pinned[name]} in {CONSTRAINTS.name} is outside pyproject.toml's {req}"


def test_torch_is_pinned_without_a_build_tag_so_one_pin_fits_every_build():
    version = pins()["torch"]
    assert "+" not in version
    torch_req = next(r for r in declared() if r.name == "torch")
    assert torch_req.specifier.contains(version)


def bootstrap(tmp_path: Path, *args: str, torch_build: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_BUILD": torch_build, "TRAINER_VENV": str(tmp_path / "venv")}
    return subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_an_unknown_torch_build_is_refused_before_anything_is_created(tmp_path):
    r = bootstrap(tmp_path, torch_build="cuda12")
    assert r.returncode == 2
    assert "TORCH_BUILD=cuda12" in r.stderr and "cu128" in r.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("build, expected", [("default", ""), ("cpu", "--index-url https://download.pytorch.org/whl/cpu"),
                                             ("cu128", "--index-url https://download.pytorch.org/whl/cu128")])
def test_torch_build_names_the_index_of_that_build(build, expected):
    r = subprocess.run(["bash", "-c", f". {ROOT}/scripts/torch_build.sh && TORCH_BUILD={build} torch_index_args"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == expected


def run_python(code: str, cwd: Path, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "TRAINER_CONFIG_DIR"}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**full, **env}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_source_checkout_reads_its_own_configs_and_the_variable_overrides_them(tmp_path):
    code = "from trainer.config.compose import config_dir; print(config_dir())"
    assert run_python(code, ROOT) == str(ROOT / "configs")
    assert run_python(code, ROOT, TRAINER_CONFIG_DIR=str(tmp_path)) == str(tmp_path)


def test_without_a_checkout_the_installed_configs_are_used(tmp_path):
    """A copy of the package with no configs/ beside it falls back to the `trainer_configs` package."""
    import shutil

    shutil.copytree(ROOT / "trainer", tmp_path / "trainer", ignore=shutil.ignore_patterns("__pycache__", "_prebuilt"))
    (tmp_path / "trainer_configs").mkdir()
    code = "import trainer.config.compose as c; assert c.__file__.startswith(%r); print(c.config_dir())" % str(tmp_path)
    assert run_python(code, tmp_path, PYTHONPATH=str(tmp_path)) == str(tmp_path / "trainer_configs")
