"""The LightningModule's own logic (decay groups, the schedule, any optimizer) and the plan's clipping."""
import functools
import math

import pytest
import torch

from trainer.distributed.strategy_plan import torch_global_norm
from trainer.models.gpt import GPT, GPTConfig
from trainer.module import TrainModule, WarmupCosineLR

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def _gpt():
    return GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosineLR(opt, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s.factor(0) == 0.1 and s.factor(9) == 1.0
    assert abs(s.factor(60) - 0.55) < 1e-9
    assert abs(s.factor(110) - 0.1) < 1e-9 and abs(s.factor(500) - 0.1) < 1e-9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # step 0 of the warmup


def test_weight_decay_only_on_matrices():
    opt = TrainModule(_gpt(), optimizer=ADAMW).configure_optimizers()
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_any_torch_optimizer_gets_the_same_groups_and_its_own_arguments():
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.01)
    sched = functools.partial(WarmupCosineLR, max_steps=10)
    out = TrainModule(_gpt(), optimizer=sgd, scheduler=sched).configure_optimizers()
    opt = out["optimizer"]
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 2
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(out["lr_scheduler"]["scheduler"], WarmupCosineLR) and out["lr_scheduler"]["interval"] == "step"


def test_gradient_clipping_bounds_the_global_norm_and_returns_it_before_clipping():
    m = TrainModule(torch.nn.Linear(4, 4), optimizer=ADAMW)
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = torch_global_norm(None, m, 1.0)
    assert before.item() == pytest.approx(10.0 * math.sqrt(20), rel=1e-5)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters()))
    assert abs(total.item() - 1.0) < 1e-4
    assert torch_global_norm(None, m, math.inf).item() == pytest.approx(1.0, rel=1e-4)  # measure only: unchanged
    assert torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters())).item() == pytest.approx(1.0, rel=1e-4)


def _fit_and_read_logged_losses(tmp_path, *, log_every: int, steps: int, stop_at: int | None, accumulate: int = 1):
    """A real pl.Trainer run of the TrainModule with a CSV log; returns ({step: logged train/loss},
    {step: the true mean loss of that optimizer step over its micro-batches})."""
    import csv

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    torch.manual_seed(0)
    x = torch.randint(0, 32, (64, 8))
    loader = torch.utils.data.DataLoader(list(zip(x, x.roll(1, 1))), batch_size=4)
    module = TrainModule(GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2)), optimizer=ADAMW)
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
