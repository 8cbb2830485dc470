"""Lightning's FSDPStrategy, on CUDA or (over gloo) on CPU.

Lightning's accelerator connector refuses FSDP without a GPU, but only for the exact
FSDPStrategy class, and it wraps the model with `device_id=root_device.index` (None on CPU,
which PyTorch's FSDP reads as "find an accelerator"). PyTorch's FSDP itself runs on CPU over
gloo when given `device_id=cpu`; the CPU subclass passes that.
"""
from __future__ import annotations

from datetime import timedelta

import torch.nn as nn


def repeated_block_types(net: nn.Module) -> set[type[nn.Module]]:
    """The module classes held in the net's ModuleLists (a GPT's transformer blocks): FSDP's wrap units."""
    return {type(m) for ml in net.modules() if isinstance(ml, nn.ModuleList) for m in ml}


def make_fsdp_strategy(*, on_gpu: bool, sharding_strategy: str, state_dict_type: str, process_group_backend: str,
                       timeout: timedelta, wrap_types: set[type[nn.Module]] | None = None):
    from pytorch_lightning.strategies import FSDPStrategy

    # use_orig_params: the optimizer sees the net's own parameters (names, groups), not flat buffers.
    kwargs = {"use_orig_params": True, **({"auto_wrap_policy": wrap_types} if wrap_types else {})}
    cls = FSDPStrategy if on_gpu else _cpu_strategy_class()
    return cls(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type,
               process_group_backend=process_group_backend, timeout=timeout, **kwargs)


def _cpu_strategy_class():
    import torch
    from pytorch_lightning.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model: nn.Module) -> nn.Module:
            from torch.distributed.fsdp import FullyShardedDataParallel

            if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
                return model
            return FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )

    return CPUFSDPStrategy


def fsdp_global_norm(trainer, pl_module, max_norm: float):
    """Global-norm clipping over all of FSDP's shards (FSDP's own clip_grad_norm_ reduces the norm);
    returns the norm before clipping."""
    return trainer.strategy.model.clip_grad_norm_(max_norm)
