"""Debug knobs that make a run slow on purpose, to check the verdict (configs/debug/straggler.yaml)."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class StragglerDelay(pl.Callback):
    """Rank `rank` sleeps `delay_s` in every training batch, inside the compute phase (after forward)."""

    def __init__(self, rank: int, delay_s: float):
        self.rank, self.delay_s = int(rank), float(delay_s)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if trainer.global_rank == self.rank and self.delay_s > 0:
            time.sleep(self.delay_s)
