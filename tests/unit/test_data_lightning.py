"""The token loaders inside a real Lightning Trainer: exact mid-run resume, workers, validation."""
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from trainer.data import TokenDataModule


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Recorder(pl.LightningModule):
    """A bigram model that records every batch it is given."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(256, 256)
        self.seen: list[tuple[int, torch.Tensor]] = []
        self.val_seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.global_step, x.clone()))
        return torch.nn.functional.cross_entropy(self.emb(x).flatten(0, 1), y.flatten())

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, max_steps, ckpt_dir=None, ckpt_path=None, every=None, val=False):
    callbacks = []
    if every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_top_k=-1))
    trainer = pl.Trainer(
        max_steps=max_steps, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=bool(every), callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, limit_val_batches=1.0 if val else 0, num_sanity_val_steps=0,
    )
    model = Recorder()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"{i}.txt").write_text("".join(f"document {i}, line {j}\n" for j in range(40)))
    return root


def module(corpus, cache, **kw):
    return TokenDataModule(path=str(corpus), cache_dir=str(cache), seq_len=16, batch_size=3, val_fraction=0.25,
                           val_batches=2, **kw)


def test_resume_mid_run_continues_with_exactly_the_batches_of_an_uninterrupted_run(corpus, tmp_path):
    straight, straight_trainer = fit(module(corpus, tmp_path / "cache"), max_steps=6, ckpt_dir=tmp_path / "ckpt", every=2)
    assert [s for s, _ in straight.seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # accumulate 2 micro-batches a step
    dm = module(corpus, tmp_path / "cache")
    for s, x in straight.seen[::2]:  # the loader yields the step-indexed pure function
        assert torch.equal(x, dm.train_batch(s, micro_step=0, accumulate=2)[0])
    ckpt = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert ckpt.is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # workers load the batches this time: same result
        resumed, trainer = fit(module(corpus, tmp_path / "cache", num_workers=1), max_steps=6, ckpt_path=str(ckpt))
    assert not [w for w in caught if "not resumable" in str(w.message) or "different training data" in str(w.message)]
    assert trainer.global_step == 6
    # the run is one epoch, resumed or not: the loader's length is the whole run's
    assert trainer.current_epoch == straight_trainer.current_epoch
    assert [s for s, _ in resumed.seen] == [2, 2, 3, 3, 4, 4, 5, 5]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed.seen, straight.seen[4:]))


def test_resuming_on_other_data_warns(corpus, tmp_path):
    fit(module(corpus, tmp_path / "cache"), max_steps=2, ckpt_dir=tmp_path / "ckpt", every=2)
    with pytest.warns(UserWarning, match="resuming with different training data .*seed: 1337 -> 7"):
        fit(module(corpus, tmp_path / "cache", seed=7), max_steps=3, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))


def test_validation_set_is_fixed_and_delay_knob_slows_loading(corpus, tmp_path):
    dm = module(corpus, tmp_path / "cache")
    first, _ = fit(dm, max_steps=2, val=True)
    second, _ = fit(module(corpus, tmp_path / "cache", seed=99), max_steps=2, val=True)
    assert len(first.val_seen) == 2 and all(v.shape == (3, 16) for v in first.val_seen)
    assert all(torch.equal(a, b) for a, b in zip(first.val_seen, second.val_seen))  # independent of the seed
    import time

    slow = module(corpus, tmp_path / "cache", batch_delay_s=0.2)
    slow.setup()
    windows = slow.windows("train", delay_s=slow.batch_delay_s)
    start = time.perf_counter()
    windows[slow.val_offsets()[0]]
    assert time.perf_counter() - start >= 0.2
