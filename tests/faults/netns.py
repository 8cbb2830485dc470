"""Two "servers" as network namespaces (scripts/netns_hosts.sh) and a trainer started on each under
multi-node torchrun, as launch.torchrun renders it for that node."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import procs
from tests.launch.conftest import ROOT, run_script

NETNS = str(ROOT / "scripts" / "netns_hosts.sh")
HOSTS = [("trn-h1", "10.77.0.1", "trn-v1"), ("trn-h2", "10.77.0.2", "trn-v2")]


def hosts_up():
    r = run_script(NETNS, "up", "--hosts")
    if r.returncode != 0 and "Operation not permitted" in r.stderr:
        run_script(NETNS, "down")
        pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr


def hosts_down():
    r = run_script(NETNS, "down")
    assert r.returncode == 0, r.stderr


def link(state: str) -> None:
    r = run_script(NETNS, "link", state)
    assert r.returncode == 0, r.stderr


def node_job(host: int, overrides: list[str], log: Path, *, rdzv_id: str, port: int, timeout_s: float,
             max_restarts: int = 0, min_nodes: int | None = None, extra_env: dict[str, str] | None = None) -> procs.Job:
    """`python -m launch.torchrun` on host 0 or 1 (rendezvous store on host 0), under a hard `timeout`."""
    ns, addr, ifname = HOSTS[host]
    launcher = [f"launcher.rdzv_endpoint={HOSTS[0][1]}:{port}", f"launcher.rdzv_id={rdzv_id}",
                f"launcher.local_addr={addr}", f"launcher.rdzv_is_host={'true' if host == 0 else 'false'}",
                f"launcher.max_restarts={max_restarts}"]
    if min_nodes is not None:
        launcher.append(f"launcher.min_nodes={min_nodes}")
    argv = ["ip", "netns", "exec", ns, "timeout", "-k", "5", str(int(timeout_s)),
            *procs.python_m("launch.torchrun", *overrides, *launcher)]
    return procs.Job(argv, log, env_vars=procs.env(GLOO_SOCKET_IFNAME=ifname, **(extra_env or {})),
                     timeout_s=timeout_s + 15)
