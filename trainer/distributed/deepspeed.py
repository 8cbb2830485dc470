"""Lightning's DeepSpeedStrategy, made to run on DeepSpeed's CPU accelerator too.

Lightning refuses non-CUDA accelerators in setup_environment and checks that device indices
match local ranks (CPU devices have none); DeepSpeed itself runs ZeRO 1-3 on its CPU
accelerator over gloo. The subclass skips those two checks and gives each CPU device an index.
DeepSpeed is imported here only, lazily: it is slow to import.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

# Lightning sets this from Trainer(accumulate_grad_batches=...) and refuses it in the config.
_SET_BY_LIGHTNING = ("gradient_accumulation_steps",)


def make_deepspeed_strategy(config: dict[str, Any], *, on_gpu: bool, timeout: timedelta, backend: str):
    from pytorch_lightning.strategies import DeepSpeedStrategy

    config = {k: v for k, v in config.items() if k not in _SET_BY_LIGHTNING}
    cls = DeepSpeedStrategy if on_gpu else _cpu_strategy_class()
    return cls(config=config, timeout=timeout, process_group_backend=backend)


def _cpu_strategy_class():
    import torch
    from lightning_fabric.utilities.seed import reset_seed
    from pytorch_lightning.strategies import DeepSpeedStrategy
    from pytorch_lightning.strategies.ddp import DDPStrategy

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        def setup_environment(self) -> None:
            # Skip DeepSpeedStrategy's CUDA-only check; the rest of the setup is DDP's.
            DDPStrategy.setup_environment(self)

        def setup_distributed(self) -> None:
            # As DeepSpeedStrategy's, minus the check that device indices equal local ranks.
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", self.local_rank)

    return CPUDeepSpeedStrategy
