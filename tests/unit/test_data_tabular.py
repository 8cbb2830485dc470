"""The classifier example: iris.csv through `datasets`, learned by MLPClassifier."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import TabularDataModule
from trainer.models.mlp import MLPClassifier

IRIS = Path(__file__).resolve().parents[2] / "examples" / "data" / "iris.csv"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_iris_loads_with_a_deterministic_split(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the shipped default path resolves from any working directory
    dm = TabularDataModule()
    dm.setup("fit")
    assert (dm.num_features, dm.num_classes) == (4, 3)
    assert dm.classes == ["setosa", "versicolor", "virginica"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (32, 4) and y.dtype == torch.int64 and y.shape == (32,)
    train_x = torch.cat([b[0] for b in dm.train_dataloader()])
    val_y = torch.cat([b[1] for b in dm.val_dataloader()])
    assert len(train_x) == 120 and len(val_y) == 30
    assert torch.allclose(train_x.mean(0), torch.zeros(4), atol=1e-5)  # standardized on the training rows
    again = TabularDataModule(path=str(IRIS), seed=1337)
    again.setup()
    assert torch.equal(torch.cat([b[1] for b in again.val_dataloader()]), val_y)
    other = TabularDataModule(path=str(IRIS), seed=1)
    other.setup()
    assert not torch.equal(torch.cat([b[1] for b in other.val_dataloader()]), val_y)


def test_json_and_parquet_tables_load_the_same_rows(tmp_path):
    import pandas as pd

    frame = pd.read_csv(IRIS)
    frame.to_json(tmp_path / "iris.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "iris.parquet")
    reference = TabularDataModule(path=str(IRIS))
    reference.setup()
    for name in ("iris.jsonl", "iris.parquet"):
        dm = TabularDataModule(path=str(tmp_path / name))
        dm.setup()
        assert (dm.num_features, dm.num_classes) == (4, 3)
        assert torch.equal(dm._val.tensors[1], reference._val.tensors[1])
        assert torch.allclose(dm._val.tensors[0], reference._val.tensors[0])


def test_mlp_conventions():
    torch.manual_seed(0)
    model = MLPClassifier(num_features=4, num_classes=3, hidden=16, depth=3, dropout=0.1)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 4
    x, t = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    assert model(x).shape == (5, 3)
    loss = model(x, t)
    assert loss.ndim == 0 and loss.item() > 0
    model.eval()
    acc = model.evaluate(x, t)["acc"]
    assert acc == (model(x).argmax(-1) == t).float().mean()


def test_mlp_learns_iris_to_good_accuracy():
    torch.manual_seed(0)
    dm = TabularDataModule(path=str(IRIS), batch_size=16)
    dm.setup("fit")
    model = MLPClassifier(dm.num_features, dm.num_classes, hidden=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    val_x, val_y = dm._val.tensors
    model.eval()
    before = model.evaluate(val_x, val_y)["acc"].item()
    model.train()
    step = 0
    while step < 300:
        for x, y in dm.train_dataloader():
            loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    with torch.no_grad():
        accs = [model.evaluate(x, y)["acc"] * len(y) for x, y in dm.val_dataloader()]
    acc = (sum(accs) / len(dm._val)).item()
    assert acc >= 0.9 > before
