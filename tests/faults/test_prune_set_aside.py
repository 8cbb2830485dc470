"""Set-aside and damaged checkpoint dirs are pruned by a stated policy (issue 13, item 5):
`checkpoint.keep_set_aside` keeps the most recently set aside for inspection; the rest is deleted at each
save, each named in the log. Through the CLI: a run with a damaged and an unfinished checkpoint is resumed
from an older step, so two steps are saved again and their earlier dirs set aside."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.faults import procs

pytestmark = pytest.mark.slow


def train_argv(run, cache, *extra):
    return procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}",
                          "checkpoint.every_n_steps=2", "checkpoint.keep_last=10", "trainer.val_every_steps=100",
                          "logger.wandb=false", *extra)


def test_set_aside_damaged_and_unfinished_dirs_are_pruned_and_named(tmp_path, shared_cache):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    first = procs.Job(train_argv(run, shared_cache, "trainer.max_steps=12"), tmp_path / "first.log", timeout_s=300)
    assert first.wait() == 0, first.tail()
    assert procs.checkpoint_steps(run) == [2, 4, 6, 8, 10, 12]
    state = ckpts / "step-00000004" / "state.ckpt"
    state.write_bytes(state.read_bytes()[:100])  # damaged: truncated
    unfinished = ckpts / ".tmp-step-00000005"  # a save that never finished (no manifest)
    shutil.copytree(ckpts / "step-00000006", unfinished)
    (unfinished / "manifest.json").unlink()

    again = procs.Job(train_argv(run, shared_cache, "trainer.max_steps=16", f"run.resume_from={ckpts / 'step-00000008'}",
                                 "checkpoint.keep_set_aside=1"), tmp_path / "again.log", timeout_s=300)
    assert again.wait() == 0, again.tail()
    out = again.output()
    removed = re.findall(r"removed (\S+): set aside, damaged or unfinished \(checkpoint.keep_set_aside=1 keeps the most "
                         r"recent for inspection\)", out)
    # At the save of step 10: the damaged step 4 and the unfinished step 5 (step 10's first save, just set
    # aside, is kept); at the save of step 12: step 10's set-aside dir.
    assert sorted(removed[:2]) == [str(unfinished), str(ckpts / "step-00000004")], out[-3000:]
    assert len(removed) == 3 and re.fullmatch(rf"{re.escape(str(ckpts))}/step-00000010\.replaced-\d+", removed[2]), removed
    set_aside = sorted(p.name for p in ckpts.iterdir() if not re.fullmatch(r"step-\d{8}", p.name))
    assert len(set_aside) == 1 and re.fullmatch(r"step-00000012\.replaced-\d+", set_aside[0]), set_aside
    assert procs.checkpoint_steps(run) == [2, 6, 8, 10, 12, 14, 16]
