"""train/lr and, under a GradScaler, train/loss_scale: logged by TrainingMetrics on a real pl.Trainer."""
from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from trainer.module import TrainModule, WarmupCosineLR
from trainer.tracking.metrics import TrainingMetrics


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, y=None):
        out = self.lin(x)
        return torch.nn.functional.mse_loss(out.float(), y) if y is not None else out


def test_lr_and_loss_scale_are_logged_every_step(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=4)
    module = TrainModule(Net(), optimizer=functools.partial(torch.optim.SGD, lr=0.5),
                         scheduler=functools.partial(WarmupCosineLR, max_steps=4, warmup_steps=2))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # a real fp16 loss scaler (16-mixed), on the CPU
    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], callbacks=[TrainingMetrics(), Record()])
    trainer.fit(module, train_dataloaders=data)
    # warmup over 2 steps, then cosine from the peak (progress 0 at step 2) to 0.1 x lr at max_steps
    assert [round(s["train/lr"], 6) for s in seen] == [0.25, 0.5, 0.5, 0.275]
    assert all(s["train/loss_scale"] > 0 for s in seen) and seen[0]["train/loss_scale"] == 1024.0
