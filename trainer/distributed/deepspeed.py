"""Lightning's DeepSpeedStrategy, made to run on DeepSpeed's CPU accelerator too.

Lightning refuses non-CUDA accelerators in setup_environment; DeepSpeed itself runs ZeRO 1-3 on
its CPU accelerator over gloo. The subclass skips that one check and gives the CPU devices an index.
DeepSpeed is imported here only, lazily: it is slow to import.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any


def make_deepspeed_strategy(config: dict[str, Any], *, on_gpu: bool, timeout: timedelta, backend: str):
    from pytorch_lightning.strategies import DeepSpeedStrategy

    if on_gpu:
        return DeepSpeedStrategy(config=config, timeout=timeout, process_group_backend=backend)
    return _CPUDeepSpeedStrategy(config=config, timeout=timeout, process_group_backend=backend)


def _cpu_strategy_class():
    import torch
    from pytorch_lightning.strategies import DeepSpeedStrategy
    from pytorch_lightning.strategies.ddp import DDPStrategy

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        def setup_environment(self) -> None:
            # Skip DeepSpeedStrategy's CUDA-only check; the rest of the setup is DDP's.
            DDPStrategy.setup_environment(self)

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", self.local_rank)

    return CPUDeepSpeedStrategy


def _CPUDeepSpeedStrategy(**kwargs):  # noqa: N802 - a factory that reads like a class
    return _cpu_strategy_class()(**kwargs)
