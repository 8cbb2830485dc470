"""FSDP2: `torch.distributed.fsdp.fully_shard` on every transformer block and then the whole net,
applied from outside the model, through Lightning's ModelParallelStrategy.

ModelParallelStrategy fits: it initialises the process group and a device mesh, moves nothing until
parallelism is applied, hands the optimizer DTensor parameters, and saves and loads
torch.distributed.checkpoint (DCP) directories through `get/set_model_state_dict` and
`get/set_optimizer_state_dict`, so a checkpoint of N ranks loads on M ranks (DCP reshards at load).
Two things differ from its defaults:

- it expects the LightningModule's `configure_model` to apply the parallelism; here the strategy does
  it (`setup`), from the net it was given, so the model and the module know nothing of FSDP2;
- its "auto" mesh is data-parallel across nodes and tensor-parallel inside a node; FSDP2 alone is one
  data-parallel dimension over every rank (`data_parallel_size=world_size`, `tensor_parallel_size=1`).

Each block is (in this order) activation-checkpointed (trainer/distributed/activation_checkpointing.py,
already applied to the net by the plan), compiled when trainer.compile=true (per block: the whole net
under FSDP2 would graph-break at every block's hooks), then sharded. Mixed precision is FSDP2's policy:
parameters all-gathered in bf16, gradients reduced in fp32, the sharded fp32 master weights updated.
On CPU (gloo) it runs unchanged: FSDP2 places shards on the mesh's device type.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.nn as nn

from trainer.distributed.activation_checkpointing import repeated_blocks


def mixed_precision_policy(precision: str):
    """FSDP2's policy for a Lightning precision string: bf16/fp16 compute with fp32 gradient reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision.startswith("bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision.startswith("16"):
        return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_net(net: nn.Module, mesh, *, precision: str, reshard_after_forward: bool, compile_blocks: bool,
              compile_mode: str) -> int:
    """fully_shard each repeated block (compiled first when asked, with torch.compile's `compile_mode`:
    trainer.compile_mode), then the root (embeddings, head, norms). Returns the number of blocks sharded."""
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision_policy(precision)
    blocks = repeated_blocks(net)
    for block in blocks:
        if compile_blocks:
            block.compile(mode=compile_mode)  # in place: parameter names (and checkpoints) stay those of the plain net
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again right at the start of backward (the output head): keep them.
    fully_shard(net, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return len(blocks)


def make_fsdp2_strategy(net: nn.Module, *, world_size: int, precision: str, reshard_after_forward: bool,
                        compile_blocks: bool, compile_mode: str, process_group_backend: str, timeout: timedelta):
    from pytorch_lightning.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        def setup(self, trainer: Any) -> None:
            shard_net(net, self.device_mesh["data_parallel"], precision=precision,
                      reshard_after_forward=reshard_after_forward, compile_blocks=compile_blocks,
                      compile_mode=compile_mode)
            super().setup(trainer)

    return FSDP2Strategy(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=True,
                         process_group_backend=process_group_backend, timeout=timeout)
