"""torchrun command lines: single node, multi-node c10d, elastic, env-driven, and the dry-run CLI."""
from __future__ import annotations

import shlex
import sys

import pytest

from launch.torchrun import torchrun_argv, torchrun_env
from tests.conftest import cli
from tests.launch.conftest import spec_for
from trainer.errors import UserError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def test_single_node_is_standalone_and_passes_overrides_through():
    spec = spec_for("torchrun", "trainer.devices=2", "strategy=ddp", "run.name=two words")
    argv = torchrun_argv(spec)
    assert argv[:3] == TORCHRUN
    assert "--standalone" in argv and "--nnodes=1" in argv and "--nproc-per-node=2" in argv
    assert "--max-restarts=3" in argv
    assert not any(a.startswith("--rdzv-endpoint") for a in argv)
    i = argv.index("-m", 3)
    assert argv[i:] == ["-m", "trainer.train", "+launcher=torchrun", "trainer.devices=2", "strategy=ddp", "run.name=two words"]
    # the fix for restarts after a killed worker (pytorch/pytorch#135712) is always in the env
    assert torchrun_env(spec)["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_multi_node_uses_c10d_rendezvous():
    spec = spec_for("torchrun", "experiment=gpt_1b", "launcher.rdzv_endpoint=node1:29400", "launcher.rdzv_id=job42",
                    "launcher.max_restarts=5", "launcher.local_addr=10.0.0.2", "launcher.rdzv_is_host=false")
    argv = torchrun_argv(spec)
    for flag in ("--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29400",
                 "--rdzv-id=job42", "--max-restarts=5", "--local-addr=10.0.0.2", "--rdzv-conf=is_host=0"):
        assert flag in argv, flag
    assert "--standalone" not in argv


def test_elastic_node_range():
    spec = spec_for("torchrun", "experiment=gpt_1b", "launcher.rdzv_endpoint=n1:29400", "launcher.rdzv_id=j",
                    "launcher.min_nodes=1")
    assert "--nnodes=1:2" in torchrun_argv(spec)


def test_driven_by_environment(monkeypatch):
    monkeypatch.setenv("RDZV_ENDPOINT", "10.1.2.3:29500")
    monkeypatch.setenv("RDZV_ID", "slurm-77")
    monkeypatch.setenv("LOCAL_ADDR", "10.1.2.4")
    monkeypatch.setenv("MAX_RESTARTS", "7")
    argv = torchrun_argv(spec_for("torchrun", "experiment=gpt_1b", "trainer.devices=4"))
    for flag in ("--rdzv-endpoint=10.1.2.3:29500", "--rdzv-id=slurm-77", "--local-addr=10.1.2.4", "--max-restarts=7",
                 "--nproc-per-node=4"):
        assert flag in argv, flag


def test_multi_node_needs_endpoint_and_id():
    with pytest.raises(UserError, match="RDZV_ENDPOINT"):
        torchrun_argv(spec_for("torchrun", "experiment=gpt_1b"))
    with pytest.raises(UserError, match="RDZV_ID"):
        torchrun_argv(spec_for("torchrun", "experiment=gpt_1b", "launcher.rdzv_endpoint=n1:29400"))


def test_dry_run_prints_exactly_the_command():
    r = cli("launch.torchrun", "--dry-run", "trainer.devices=2", "strategy=ddp", "run.name=a b", timeout=120)
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout.strip())
    assert words[0] == "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"
    expected = torchrun_argv(spec_for("torchrun", "trainer.devices=2", "strategy=ddp", "run.name=a b"))
    assert words[1:] == expected


def test_bad_override_exits_2_without_traceback():
    r = cli("launch.torchrun", "--dry-run", "trainer.devicez=2", timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "'devices'" in r.stderr and "Traceback" not in r.stderr
