"""The LightningModule's own logic (decay groups, the schedule) and the plan's clipping."""
from dataclasses import asdict

import torch

from trainer.config import OptimConfig
from trainer.distributed.strategy_plan import torch_global_norm
from trainer.models.gpt import GPT, GPTConfig
from trainer.module import TrainModule


def _module(net, max_steps=100, **optim):
    return TrainModule(net, **{**asdict(OptimConfig()), **optim}, max_steps=max_steps)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    m = _module(torch.nn.Linear(2, 2), warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert m.lr_factor(0) == 0.1 and m.lr_factor(9) == 1.0
    assert abs(m.lr_factor(60) - 0.55) < 1e-9
    assert abs(m.lr_factor(110) - 0.1) < 1e-9 and abs(m.lr_factor(500) - 0.1) < 1e-9


def test_weight_decay_only_on_matrices():
    net = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    opt = _module(net, weight_decay=0.1).configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_a_substituted_optimizer_class_is_used_with_the_same_groups():
    net = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    opt = TrainModule(net, **asdict(OptimConfig()), max_steps=10, optimizer_class=torch.optim.Adam).configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 2


def test_gradient_clipping_bounds_the_global_norm():
    m = _module(torch.nn.Linear(4, 4))
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    torch_global_norm(None, m, 1.0)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters()))
    assert abs(total.item() - 1.0) < 1e-4


def _fit_and_read_logged_losses(tmp_path, *, log_every: int, steps: int, stop_at: int | None, accumulate: int = 1):
    """A real pl.Trainer run of the TrainModule with a CSV log; returns ({step: logged train/loss},
    {step: the true mean loss of that optimizer step over its micro-batches})."""
    import csv

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randint(0, 32, (64, 8))
    loader = torch.utils.data.DataLoader(list(zip(x, x.roll(1, 1))), batch_size=4)
    module = _module(GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2)), max_steps=steps)
    true: dict[int, list[float]] = {}
    calls = []
    log = module.log
    module.log = lambda *a, **k: (calls.append(a[0]), log(*a, **k))[1]

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with torch.no_grad():  # the micro-batch's loss with the weights it is trained on
                loss = pl_module(*batch).item()
            true.setdefault(trainer.fit_loop.epoch_loop._batches_that_stepped, []).append(loss)  # the logged step axis

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if stop_at is not None and trainer.global_step == stop_at:
                trainer.should_stop = True  # as the checkpoint callback does on preemption

    trainer = pl.Trainer(max_steps=steps, log_every_n_steps=log_every, accumulate_grad_batches=accumulate,
                         logger=CSVLogger(tmp_path, name="", version=""), callbacks=[Record()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, train_dataloaders=loader)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    logged = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    true = {s: sum(v) / len(v) for s, v in true.items()}
    # what the run summary reports as the final train loss: the last step's
    assert abs(trainer.callback_metrics["train/loss"].item() - true[max(true)]) < 1e-6
    return logged, true, len(calls)


def test_train_loss_is_logged_on_the_logging_cadence_with_that_steps_value(tmp_path):
    logged, true, log_calls = _fit_and_read_logged_losses(tmp_path, log_every=3, steps=8, stop_at=None)
    assert sorted(logged) == [2, 5]  # every 3rd step (Lightning writes no row for the last one)
    assert log_calls == 3, "self.log on the logged steps and the last one only, not on every step"
    for step, value in logged.items():
        assert abs(value - true[step]) < 1e-6, (step, value, true[step])


def test_a_step_that_stops_the_run_logs_its_own_loss_not_a_stale_one(tmp_path):
    logged, true, _ = _fit_and_read_logged_losses(tmp_path, log_every=3, steps=20, stop_at=5)
    assert sorted(logged) == [2, 4]  # step index 4 is the 5th optimizer step, where the stop came
    for step, value in logged.items():
        assert abs(value - true[step]) < 1e-6, (step, value, true[step])


def test_with_accumulation_the_logged_loss_is_the_steps_mean_over_its_micro_batches(tmp_path):
    logged, true, _ = _fit_and_read_logged_losses(tmp_path, log_every=2, steps=4, stop_at=None, accumulate=2)
    assert sorted(logged) == [1, 3]
    for step, value in logged.items():
        assert abs(value - true[step]) < 1e-6, (step, value, true[step])
