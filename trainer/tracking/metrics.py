"""Training metrics beside the loss: the learning rate and, under a 16-mixed GradScaler, the loss scale.

(The gradient norm before clipping is logged where it is computed: by the strategy plan's clipping.)
"""
from __future__ import annotations

import pytorch_lightning as pl


class TrainingMetrics(pl.Callback):
    """train/lr: the learning rate this optimizer step uses (the first parameter group's, before the
    scheduler moves it); train/loss_scale: the GradScaler's scale this step's backward used."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        pl_module.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            pl_module.log("train/loss_scale", float(scaler.get_scale()), on_step=True, on_epoch=False)
