"""2-rank runs shared by the distributed tests: each strategy trains once per session.

Every run goes through the real CLI (`trainer.devices=2` → torchrun → 2 gloo ranks) with the
tiny GPT and the LiveWeightsModule (the built-in TrainModule plus a dump of the gathered live
weights at the end), in two sessions: stop after step 4 with a checkpoint, then resume to step 8.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.distributed.helpers import ok, train

STEPS, SPLIT = 8, 4
LIVE = ["+module._target_=tests.fixtures.live_weights.LiveWeightsModule"]  # gets the optim and scheduler sections


class Runs:
    def __init__(self, root: Path, cache: Path):
        self.root, self.cache, self.done = root, cache, {}

    def reference(self) -> Path:
        """1 process accumulating 2 micro-batches: the same global batch as 2 ranks."""
        return self._get("reference", "trainer.accumulate_grad_batches=2")

    def two_ranks(self, strategy: str, *extra: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join((strategy, *extra)))  # a run dir name Hydra can parse
        return self._get(name, f"strategy={strategy}", "trainer.devices=2", *extra)

    def one_session(self, strategy: str, *extra: str) -> Path:
        """2 ranks, straight to the last step (no stop and resume): for comparing loss curves only."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(("once", strategy, *extra)))
        if name not in self.done:
            run = self.root / name
            ok(train(run, self.cache, f"trainer.max_steps={STEPS}", *LIVE, f"strategy={strategy}", "trainer.devices=2", *extra))
            self.done[name] = run
        return self.done[name]

    def _get(self, name: str, *args: str) -> Path:
        if name not in self.done:
            run = self.root / name
            ok(train(run, self.cache, f"trainer.max_steps={STEPS}", f"run.stop_after_steps={SPLIT}", *LIVE, *args))
            ok(train(run, self.cache, f"trainer.max_steps={STEPS}", *LIVE, *args))
            self.done[name] = run
        return self.done[name]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, shared_cache) -> Runs:
    return Runs(tmp_path_factory.mktemp("dist-runs"), shared_cache)
