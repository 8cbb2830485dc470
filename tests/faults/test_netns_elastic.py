"""A host cut off (issue 4, fault 4), on the two network-namespace hosts with elastic node bounds
(torchrun --nnodes=1:2, launcher.min_nodes=1), one rank per host, DDP over gloo.

- A short outage (shorter than the process-group timeout) only stalls the collectives: the run
  continues with no restart.
- Then a permanent cut in the same job: the host that still reaches rank 0 (host 1, which also holds the rendezvous
  store) notices through the collective timeout, re-forms a one-node world, resumes from the newest
  checkpoint with accumulation doubled (same global batch) and finishes; the cut-off host ends
  within a bounded time, non-zero, naming the lost peer (trainer/distributed/watchdog.py).
"""
from __future__ import annotations

import json
import re
import time

import pytest

from tests.faults import netns, procs
from tests.launch.conftest import needs_root

pytestmark = [pytest.mark.slow, needs_root("ip")]
STEPS = 40
PG_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def hosts():
    netns.hosts_up()
    yield
    netns.hosts_down()


def start(tmp_path, cache, name: str, port: int, started: list) -> list[procs.Job]:
    run = tmp_path / "run"
    overrides = [*procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}", "strategy=ddp", "trainer.num_nodes=2",
                 f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=4", "trainer.val_every_steps=100",
                 "logger.wandb=false", "+data.batch_delay_s=0.1", f"strategy.timeout_s={PG_TIMEOUT_S}"]
    nodes = [netns.node_job(h, overrides, tmp_path / f"{name}-host{h}.log", rdzv_id=name, port=port, timeout_s=300,
                            max_restarts=1, min_nodes=1) for h in (0, 1)]
    started += nodes
    return nodes


def test_short_outage_stalls_then_a_cut_off_host_ends_and_the_survivor_finishes_alone(hosts, tmp_path, shared_cache):
    run = tmp_path / "run"
    try:
        with procs.jobs() as started:
            survivor, cut = start(tmp_path, shared_cache, "cut", 29422, started)
            procs.wait_for("checkpoint step 4", lambda: 4 in procs.checkpoint_steps(run), 200, job=survivor)
            # 1. a short outage (a third of the timeout): the collectives stall, then training simply continues
            netns.link("down")
            time.sleep(PG_TIMEOUT_S / 3)
            netns.link("up")
            after = max(procs.checkpoint_steps(run)) + 4
            procs.wait_for(f"checkpoint step {after} after the outage", lambda: after in procs.checkpoint_steps(run), 90,
                           job=survivor)
            assert cut.proc.poll() is None and "resuming from" not in survivor.output()  # no restart, both still in
            # 2. a permanent cut
            netns.link("down")
            t_cut = time.monotonic()
            cut_code = cut.wait(timeout_s=(time.monotonic() - cut.started) + 3 * PG_TIMEOUT_S)
            t_cut_end = time.monotonic() - t_cut
            # the survivor's worker fails its collective (torchrun logs the failure), then the agent re-forms
            procs.wait_for("the survivor noticing", lambda: "failed (exitcode" in survivor.output(), 60, job=survivor)
            t_noticed = time.monotonic() - t_cut
            procs.wait_for("the survivor re-forming", lambda: "elastic: 1 of 2 nodes" in survivor.output(), 150,
                           job=survivor)
            t_reformed = time.monotonic() - t_cut
            assert survivor.wait() == 0, survivor.tail()
    finally:
        netns.link("up")
    cut_out, out = cut.output(), survivor.output()
    assert cut_code != 0 and "lost peer rank 0's host 10.77.0.1" in cut_out, cut.tail()
    assert t_cut_end <= 3 * PG_TIMEOUT_S and t_noticed <= 60
    assert "trainer.accumulate_grad_batches 1 -> 2 keeps the global batch" in out
    resumed = int(re.search(r"resuming from step (\d+)", out).group(1))
    assert resumed >= after
    summary = json.loads((run / "manifest.json").read_text())["summary"]
    assert summary["stopped"] == "completed" and summary["steps"] == STEPS, summary
    final = json.loads((run / "checkpoints" / f"step-{STEPS:08d}" / "manifest.json").read_text())
    assert (final["world_size"], final["accumulate_grad_batches"], final["global_batch"]) == (1, 2, 8), final
    print(f"link cut: cut-off host ended (exit {cut_code}) after {t_cut_end:.1f} s; survivor noticed after"
          f" {t_noticed:.1f} s, re-formed a 1-node world"
          f" after {t_reformed:.1f} s and resumed from step {resumed}")
