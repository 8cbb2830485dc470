"""Elastic node counts: fit the run to the world torchrun actually formed, keeping the global batch.

With `torchrun --nnodes=MIN:MAX` (launcher.min_nodes) a restart may come up with fewer nodes than
trainer.num_nodes. The global batch is data.batch_size x accumulate x world; keeping it (and with it
the samples of every step, see trainer/data/sampling.py) means raising gradient accumulation by the
factor of nodes lost.
"""
from __future__ import annotations

from trainer.errors import UserError


def elastic_layout(*, devices: int, num_nodes: int, accumulate: int, world_size: int,
                   min_nodes: int | None) -> tuple[int, int]:
    """(num_nodes, accumulate_grad_batches) for a world of world_size processes.

    Unchanged unless the run is elastic (min_nodes set) and the world differs from
    devices x num_nodes. Raises UserError when the smaller world cannot keep the global batch.
    """
    if min_nodes is None:
        return num_nodes, accumulate
    check_elastic_bounds(num_nodes=num_nodes, accumulate=accumulate, min_nodes=min_nodes)
    if world_size == devices * num_nodes:
        return num_nodes, accumulate
    if world_size % devices:
        raise UserError(
            f"an elastic restart formed a world of {world_size} processes, not a multiple of trainer.devices={devices}:"
            " every node must run trainer.devices processes (torchrun --nproc-per-node)"
        )
    nodes = world_size // devices
    if not min_nodes <= nodes <= num_nodes:
        raise UserError(
            f"an elastic restart formed {nodes} node(s), outside launcher.min_nodes={min_nodes}..trainer.num_nodes={num_nodes}"
        )
    return nodes, accumulate * num_nodes // nodes


def check_elastic_bounds(*, num_nodes: int, accumulate: int, min_nodes: int) -> None:
    """Every node count torchrun may form (min_nodes..num_nodes) must keep the global batch: checked at
    every start, so a bad pair of bounds fails at once, not at the first restart hours later."""
    if not 1 <= min_nodes <= num_nodes:
        raise UserError(f"launcher.min_nodes={min_nodes} must be between 1 and trainer.num_nodes={num_nodes}")
    slots = accumulate * num_nodes
    bad = [n for n in range(min_nodes, num_nodes) if slots % n]
    if bad:
        raise UserError(
            f"with {bad[0]} of trainer.num_nodes={num_nodes} nodes the global batch cannot be kept: accumulation would"
            f" have to be {slots}/{bad[0]}. Every node count from launcher.min_nodes={min_nodes} to {num_nodes} must"
            f" divide trainer.num_nodes x trainer.accumulate_grad_batches ({slots}): raise launcher.min_nodes or"
            " change trainer.accumulate_grad_batches"
        )
