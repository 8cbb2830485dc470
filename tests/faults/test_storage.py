"""Full and read-only storage (issue 13, item 4), on real mounts (root): a save that storage refuses ends
the run with one clear error (the path, the space a checkpoint needs, the newest good checkpoint) and exit
code STORAGE_ERROR_EXIT, no traceback; nothing is lost, and the same command resumes once storage is
fixed. Checkpoint files are written inside the run dir's checkpoints folder, not the system temp dir.
"""
from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.faults import procs
from trainer.checkpoint import store
from trainer.errors import STORAGE_ERROR_EXIT

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(autouse=True)
def _root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a tmpfs / a read-only bind mount)")


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {r.stderr.strip()}")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def train_argv(run: Path, cache: Path, *extra: str) -> list[str]:
    return procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}",
                          "trainer.max_steps=40", "checkpoint.every_n_steps=4", "trainer.val_every_steps=100",
                          "logger.wandb=false", *extra)


def assert_one_clear_error(out: str) -> None:
    assert out.count("error: ") == 1 and "Traceback" not in out, out[-4000:]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_disk_full_is_one_error_and_nothing_is_lost(mode, tmp_path, shared_cache):
    # async: the refused write happens in the background; the next save reports it with the same message.
    saving = ["checkpoint.async=true"] if mode == "async" else []
    # 1 MiB holds the run's small files and three ~0.3 MiB checkpoints (keep_last=3), not a fourth.
    with tmpfs(tmp_path / "disk", "1m") as disk:
        run = disk / "run"
        full = procs.Job(train_argv(run, shared_cache, *saving), tmp_path / "full.log", timeout_s=300)
        code = full.wait()
        out = full.output()
        assert code == STORAGE_ERROR_EXIT, full.tail()
        assert_one_clear_error(out)
        newest = max(procs.checkpoint_steps(run))
        m = re.search(r"error: could not save the checkpoint of step (\d+): No space left on device \(errno 28\) writing "
                      rf"{re.escape(str(run / 'checkpoints'))}/\.tmp-step-\d+/state\.ckpt\. A checkpoint needs about "
                      r"([\d.]+) KiB \(the size of the last checkpoint\); ([\d.]+) (?:B|KiB) is free on that filesystem\. "
                      rf"Nothing was lost: the newest good checkpoint is {re.escape(str(run / 'checkpoints'))}/"
                      rf"step-{newest:08d} \(step {newest}\); free space there", out)
        assert m, out[-3000:]
        assert int(m.group(1)) == newest + 4
        assert not store.leftover_partials(run / "checkpoints")  # the unfinished save was removed
        store.verify(run / "checkpoints" / f"step-{newest:08d}")  # the newest good one is whole

        # More space, the same command: it resumes from that checkpoint and finishes.
        mount("-o", "remount,size=8m", str(disk))
        resumed = procs.Job(train_argv(run, shared_cache, *saving), tmp_path / "resumed.log", timeout_s=300)
        assert resumed.wait() == 0, resumed.tail()
        assert f"resuming from step {newest}" in resumed.output()
        assert max(procs.checkpoint_steps(run)) == 40


def test_read_only_checkpoints_dir_under_two_ranks(tmp_path, shared_cache):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    mount("--bind", str(ckpts), str(ckpts))
    try:
        mount("-o", "remount,ro,bind", str(ckpts))
        job = procs.Job(train_argv(run, shared_cache, "trainer.devices=2", "strategy=ddp"), tmp_path / "ro.log",
                        timeout_s=300)
        assert job.wait() == STORAGE_ERROR_EXIT, job.tail()
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)
    out = job.output()
    assert_one_clear_error(out)  # printed by rank 0 alone; rank 1 exits with the same code, quietly
    assert (f"error: could not save the checkpoint of step 4: Read-only file system (errno 30) writing {ckpts}/.tmp-step-00000004. "
            f"The checkpoints folder {ckpts} must be writable by this job. There is no checkpoint yet;") in out, out[-3000:]
    assert "restarting the ranks" not in out  # a restart would fail the same way


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_checkpoints_are_written_inside_the_run_dir_not_the_system_temp_dir(mode, tmp_path, shared_cache):
    # A system temp dir far smaller than a checkpoint: Lightning's own writer staged every file there.
    saving = ["checkpoint.async=true"] if mode == "async" else []
    with tmpfs(tmp_path / "small-tmp", "64k") as small_tmp:
        run = tmp_path / "run"
        job = procs.Job(train_argv(run, shared_cache, "trainer.max_steps=8", *saving), tmp_path / "job.log",
                        env_vars=procs.env(TMPDIR=str(small_tmp)), timeout_s=300)
        assert job.wait() == 0, job.tail()
        assert procs.checkpoint_steps(run) == [4, 8]
        assert os.path.getsize(run / "checkpoints" / "step-00000008" / "state.ckpt") > 64 * 1024
