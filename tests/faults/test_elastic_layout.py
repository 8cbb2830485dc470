"""The layout an elastic restart trains with: fewer nodes, more accumulation, the same global batch."""
from __future__ import annotations

import pytest

from trainer.distributed.elastic import elastic_layout
from trainer.distributed.watchdog import watchdog_for_this_node
from trainer.errors import UserError


@pytest.mark.parametrize("world,expected", [(4, (2, 1)), (2, (1, 2))])
def test_lost_nodes_raise_accumulation_to_keep_the_global_batch(world, expected):
    nodes, accumulate = elastic_layout(devices=2, num_nodes=2, accumulate=1, world_size=world, min_nodes=1)
    assert (nodes, accumulate) == expected
    assert 4 * accumulate * world == 4 * 1 * 4  # batch_size x accumulate x world is unchanged


def test_not_elastic_or_full_world_is_unchanged():
    assert elastic_layout(devices=1, num_nodes=2, accumulate=3, world_size=2, min_nodes=None) == (2, 3)
    assert elastic_layout(devices=1, num_nodes=2, accumulate=3, world_size=2, min_nodes=1) == (2, 3)


@pytest.mark.parametrize("world,min_nodes,match", [
    (3, 1, "not a multiple of trainer.devices"),
    (2, 2, "outside launcher.min_nodes"),
])
def test_impossible_worlds_are_user_errors(world, min_nodes, match):
    with pytest.raises(UserError, match=match):
        elastic_layout(devices=2, num_nodes=2, accumulate=1, world_size=world, min_nodes=min_nodes)


def test_bounds_that_cannot_keep_the_global_batch_are_refused_at_the_first_start():
    # 2 of 3 nodes would need accumulation 3/2: refused even while all 3 nodes are there
    with pytest.raises(UserError, match="with 2 of trainer.num_nodes=3 nodes the global batch cannot be kept"):
        elastic_layout(devices=1, num_nodes=3, accumulate=1, world_size=3, min_nodes=1)
    assert elastic_layout(devices=1, num_nodes=3, accumulate=2, world_size=2, min_nodes=2) == (2, 3)
    with pytest.raises(UserError, match="between 1 and"):
        elastic_layout(devices=1, num_nodes=2, accumulate=1, world_size=2, min_nodes=3)


def test_watchdog_only_on_nodes_without_rank_0_of_a_multi_node_torchrun():
    base = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29500"}
    assert watchdog_for_this_node({**base, "GROUP_RANK": "0"}, 20) is None
    assert watchdog_for_this_node({**base, "GROUP_RANK": "1", "WORLD_SIZE": "1"}, 20) is None
    assert watchdog_for_this_node({k: v for k, v in base.items() if k != "TORCHELASTIC_RUN_ID"} | {"GROUP_RANK": "1"}, 20) is None
    dog = watchdog_for_this_node({**base, "GROUP_RANK": "1"}, 20)
    assert dog is not None and (dog.host, dog.port, dog.cut_off_after_s) == ("10.0.0.1", 29500, 20)


def test_watchdog_probe_sees_a_listening_port_and_a_closed_one():
    import socket

    from trainer.distributed.watchdog import PeerWatchdog

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert PeerWatchdog("127.0.0.1", port, cut_off_after_s=5).reachable()
    server.close()
    assert not PeerWatchdog("127.0.0.1", port, cut_off_after_s=5, probe_timeout_s=0.5).reachable()
