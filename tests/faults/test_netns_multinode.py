"""Several hosts (issue 4, fault 6): two network-namespace "servers" with their own addresses on a veth
pair run the trainer under multi-node torchrun with c10d rendezvous, one rank each, with DDP and with
DeepSpeed ZeRO-2; the losses equal those of a single-host run with the same global batch (2 ranks on
one host)."""
from __future__ import annotations

import pytest

from tests.faults import netns, procs
from tests.launch.conftest import needs_root

# extended: two hosts training like one is also checked by the default suite through two containers as
# torchrun nodes (tests/launch/test_container_image.py) and the two-node c10d rendezvous (test_netns_torchrun.py).
pytestmark = [pytest.mark.slow, pytest.mark.extended, needs_root("ip")]
STEPS = 6


@pytest.fixture(scope="module")
def hosts():
    netns.hosts_up()
    yield
    netns.hosts_down()


def overrides(run, cache, strategy: str) -> list[str]:
    return [*procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}", f"strategy={strategy}",
            f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=100", "trainer.val_every_steps=100",
            "logger.wandb=false"]


@pytest.mark.parametrize("strategy,port", [("ddp", 29411), ("deepspeed_zero2", 29412)])
def test_two_hosts_train_like_one_host(hosts, tmp_path, shared_cache, strategy, port):
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    with procs.jobs() as started:
        single = procs.Job(procs.python_m("trainer.train", *overrides(one, shared_cache, strategy), "trainer.devices=2"),
                           tmp_path / "one_host.log", timeout_s=300)
        started.append(single)
        nodes = [netns.node_job(h, [*overrides(two, shared_cache, strategy), "trainer.num_nodes=2"],
                                tmp_path / f"host{h}.log", rdzv_id=f"netns-{strategy}", port=port, timeout_s=300)
                 for h in (0, 1)]
        started += nodes
        for job in [*nodes, single]:
            assert job.wait() == 0, "\n".join(j.tail(3000) for j in [*nodes, single])
    a, b = procs.logged_losses(one), procs.logged_losses(two)
    assert sorted(a) == sorted(b) == list(range(STEPS)), (a, b)
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"{strategy}: max |loss(one host) - loss(two hosts)| over {STEPS} steps = {diff:.2e}")
    assert diff <= 1e-6 * max(abs(v) for v in a.values()), (a, b)
    assert "world 2" in nodes[0].output()
