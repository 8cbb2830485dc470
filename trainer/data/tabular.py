"""TabularDataModule: a CSV/json/parquet table with a label column, for the classifier example.

Read through HF `datasets.load_dataset`; every column but the label must be numeric and
becomes a feature, standardized with the training rows' mean and std. Labels (strings or
integers) become class ids in sorted order. Rows are split into train/val by a seeded
permutation, the same for the same seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, TensorDataset

from trainer.data.checks import require, with_defaults
from trainer.data.sources import quiet_datasets
from trainer.errors import UserError, closest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class TabularDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str = "examples/data/iris.csv",
        label_column: str = "species",
        batch_size: int = 32,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 1337,
    ):
        super().__init__()
        self.check_config(val_fraction=val_fraction, batch_size=batch_size)
        self.path, self.label_column, self.batch_size = path, label_column, batch_size
        self.val_fraction, self.num_workers, self.seed = val_fraction, num_workers, seed
        self.num_features: int | None = None
        self.num_classes: int | None = None
        self.classes: list = []
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    @classmethod
    def check_config(cls, **kwargs) -> None:
        """The data section's values, checked once: by the constructor and by the config validation."""
        a = with_defaults(cls, kwargs)
        require(0.0 < a["val_fraction"] < 1.0, "val_fraction", a["val_fraction"], "strictly between 0 and 1")
        require(a["batch_size"] >= 1, "batch_size", a["batch_size"], "a positive number of rows")

    def prepare_data(self) -> None:
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        file = self._resolve_path()
        features, labels = self._read(file)
        self.classes = sorted(set(labels.tolist()))
        if len(self.classes) < 2:
            raise UserError(
                f"data.label_column={self.label_column!r} in {file} has a single value ({self.classes}); "
                "a classifier needs at least two classes."
            )
        y = np.searchsorted(np.array(self.classes), labels)
        order = np.random.default_rng(self.seed).permutation(len(y))
        n_val = min(max(1, round(len(y) * self.val_fraction)), len(y) - 1)
        val, train = order[:n_val], order[n_val:]
        mean, std = features[train].mean(0), features[train].std(0)
        x = (features - mean) / np.where(std > 0, std, 1.0)  # standardized with training statistics only
        as_tensors = lambda rows: TensorDataset(  # noqa: E731
            torch.from_numpy(x[rows].astype(np.float32)), torch.from_numpy(y[rows].astype(np.int64))
        )
        self._train, self._val = as_tensors(train), as_tensors(val)
        self.num_features, self.num_classes = x.shape[1], len(self.classes)

    def _resolve_path(self) -> Path:
        p = Path(self.path).expanduser()
        if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
            p = PROJECT_ROOT / p  # the shipped examples work from any working directory
        if not p.is_file():
            raise UserError(
                f"data.path={self.path!r} is not a file (looked in {Path.cwd()} and {PROJECT_ROOT}). "
                f"Point data.path at a {'/'.join(BUILDERS)} table."
            )
        if p.suffix not in BUILDERS:
            raise UserError(f"data.path={self.path!r}: unsupported table format {p.suffix!r}; use one of {', '.join(BUILDERS)}.")
        return p

    def _read(self, file: Path) -> tuple[np.ndarray, np.ndarray]:
        """(features float64 (N, F), labels (N,)) from the table."""
        import datasets

        try:
            with quiet_datasets():
                ds = datasets.load_dataset(BUILDERS[file.suffix], data_files=str(file), split="train")
        except Exception as e:  # malformed files surface as one of several datasets errors
            raise UserError(f"data.path={self.path!r}: could not read it as {file.suffix} ({type(e).__name__}: {e}).") from e
        columns = ds.column_names
        if self.label_column not in columns:
            raise UserError(
                f"data.label_column={self.label_column!r} is not a column of {file} (columns: {', '.join(columns)})."
                f"{closest(self.label_column, columns)} Set data.label_column to the column with the class labels."
            )
        feature_columns = [c for c in columns if c != self.label_column]
        if not feature_columns:
            raise UserError(f"data.path={self.path!r} has no feature columns besides data.label_column={self.label_column!r}.")
        for c in feature_columns:
            dtype = getattr(ds.features[c], "dtype", None)
            if not (dtype == "bool" or str(dtype).startswith(("int", "uint", "float"))):
                raise UserError(
                    f"column {c!r} of {file} is {ds.features[c]}, not numeric; every column but "
                    f"data.label_column={self.label_column!r} is used as a feature. Encode or drop it."
                )
        table = ds.data
        features = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in feature_columns])
        features = features.astype(np.float64)
        if np.isnan(features).any():
            bad = [c for i, c in enumerate(feature_columns) if np.isnan(features[:, i]).any()]
            raise UserError(f"{file} has missing values in column(s) {', '.join(bad)}; fill or drop those rows.")
        labels = table.column(self.label_column).to_numpy(zero_copy_only=False)
        if any(v is None for v in labels):
            raise UserError(f"{file} has rows without a label in data.label_column={self.label_column!r}.")
        return features, labels

    def _loader(self, ds: TensorDataset, train: bool) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if world > 1:  # Lightning's sampler injection is off (step-indexed token data): shard the rows here
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=self.seed)
        elif train:
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = SequentialSampler(ds)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._train, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._val, train=False)
