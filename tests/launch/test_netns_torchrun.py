"""A 2-node torchrun across two network-namespace hosts: c10d rendezvous, one rank per host, gloo all_reduce.

The command lines are the ones launch.torchrun renders for each node (its own --local-addr and
is_host), so this is the multi-node path a user runs, on real sockets between two addresses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from launch.torchrun import torchrun_argv, torchrun_env
from tests.launch.conftest import ALLREDUCE_JOB, ROOT, needs_root, run_script, spec_for

pytestmark = [pytest.mark.slow, needs_root("ip")]
NETNS = str(ROOT / "scripts" / "netns_hosts.sh")
HOSTS = [("trn-h1", "10.77.0.1", "trn-v1"), ("trn-h2", "10.77.0.2", "trn-v2")]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def hosts():
    r = run_script(NETNS, "up", "--hosts")
    if r.returncode != 0 and "Operation not permitted" in r.stderr:
        run_script(NETNS, "down")
        pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert run_script(NETNS, "up").returncode == 0  # idempotent
    yield
    r = run_script(NETNS, "down")
    assert r.returncode == 0, r.stderr
    assert "absent" in run_script(NETNS, "status").stdout


def test_two_node_torchrun_over_c10d(hosts, tmp_path):
    out = tmp_path / "out"
    procs: list[subprocess.Popen] = []
    try:
        for i, (ns, addr, ifname) in enumerate(HOSTS):
            spec = spec_for("torchrun", "trainer.num_nodes=2", "strategy=ddp", "launcher.rdzv_endpoint=host1:29400",
                            "launcher.rdzv_id=netns-test", f"launcher.local_addr={addr}",
                            f"launcher.rdzv_is_host={'true' if i == 0 else 'false'}", "launcher.max_restarts=0")
            argv = torchrun_argv(spec, [str(ALLREDUCE_JOB), str(out)])
            env = {**os.environ, **torchrun_env(spec), "GLOO_SOCKET_IFNAME": ifname}
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "timeout", "-k", "5", str(TIMEOUT_S), *argv],
                                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=TIMEOUT_S + 15)[0] for p in procs]
    finally:
        for p in procs:  # clean up by PID, whatever happened: `timeout` leads its own process group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [x["sum"] for x in ranks] == [3.0, 3.0]
    assert [x["world"] for x in ranks] == [2, 2]
    # the rank-0 store lives on host1's address: the rendezvous went over the link, not loopback
    assert all(x["master"].startswith("10.77.0.1:") for x in ranks)


def test_link_can_be_cut_and_restored(hosts):
    def state(ns: str, ifname: str) -> str:
        return subprocess.run(["ip", "-n", ns, "-br", "link", "show", ifname], capture_output=True, text=True,
                              check=True).stdout.split()[1]

    assert run_script(NETNS, "link", "down").returncode == 0
    assert [state(ns, ifname) for ns, _, ifname in HOSTS] == ["DOWN", "DOWN"]
    assert run_script(NETNS, "link", "up").returncode == 0
    assert run_script(NETNS, "up").returncode == 0  # waits until both ends report UP again
    assert [state(ns, ifname) for ns, _, ifname in HOSTS] == ["UP", "UP"]
