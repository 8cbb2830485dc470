"""TokenDataModule: a text corpus as memory-mapped token shards, sampled by optimizer step.

The constructor's keyword arguments are the `data` config schema. prepare_data()/setup()
build the shards (once per data fingerprint, other processes wait) and open them; after that
vocab_size, fingerprint, corpus_stats(), encode() and decode() are available.
"""
from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from trainer.data.checks import require, with_defaults
from trainer.data.corpus import build_token_shards, data_fingerprint, hf_cache_dir
from trainer.data.sampling import (
    StepIndexedDataLoader,
    StepSampler,
    TokenWindows,
    evenly_spaced_offsets,
    micro_batch_indices,
    rank_val_batches,
)
from trainer.data.shards import Shards, cache_root, ensure_shards
from trainer.data.sources import HubSource, load_documents, quiet_datasets, resolve_source
from trainer.data.tokenizer import Tokenizer, check_tokenizer_args, load_tokenizer
from trainer.errors import UserError


class TokenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str = "stdlib",
        tokenizer: str = "byte",
        bpe_vocab_size: int = 4096,
        seq_len: int = 256,
        batch_size: int = 16,  # micro-batch per process
        val_fraction: float = 0.05,
        val_batches: int = 8,  # the whole validation set is val_batches * batch_size windows, shared by the ranks
        num_workers: int = 0,
        seed: int = 1337,
        cache_dir: str | None = None,
        text_field: str = "text",  # the text column of json/jsonl/parquet files
        file_glob: str | None = None,  # which files of a directory (default: all, recursively)
        num_proc: int = 1,  # processes for tokenization
        batch_delay_s: float = 0.0,  # debug: sleep per micro-batch in the loader, to make a run input-bound
    ):
        self.check_config(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        super().__init__()
        self.path, self.tokenizer_kind, self.bpe_vocab_size = path, tokenizer, bpe_vocab_size
        self.seq_len, self.batch_size, self.val_fraction, self.val_batches = seq_len, batch_size, val_fraction, val_batches
        self.num_workers, self.seed, self.cache_dir = num_workers, seed, cache_dir
        self.text_field, self.file_glob, self.num_proc, self.batch_delay_s = text_field, file_glob, num_proc, batch_delay_s
        self._shards: Shards | None = None
        self._tokenizer: Tokenizer | None = None
        self.built_shards = False  # whether this process built them (others reused them)

    @classmethod
    def check_config(cls, **kwargs) -> None:
        """The data section's values, checked in one place: by the constructor, and by the config
        validation (trainer.config.validate) before any process starts."""
        a = with_defaults(cls, kwargs)
        check_tokenizer_args(a["tokenizer"], a["bpe_vocab_size"])
        require(a["seq_len"] >= 1, "seq_len", a["seq_len"], "a positive number of tokens")
        require(a["batch_size"] >= 1, "batch_size", a["batch_size"], "a positive number of sequences")
        require(0.0 < a["val_fraction"] < 1.0, "val_fraction", a["val_fraction"], "a fraction strictly between 0 and 1")
        require(a["val_batches"] >= 1, "val_batches", a["val_batches"], "at least 1 (disable validation in the trainer)")
        require(a["num_workers"] >= 0, "num_workers", a["num_workers"], "0 (load in the main process) or more")
        require(a["num_proc"] >= 1, "num_proc", a["num_proc"], "at least 1")
        require(a["batch_delay_s"] >= 0, "batch_delay_s", a["batch_delay_s"], "0 or more seconds")

    @classmethod
    def planned_attributes(cls, **kwargs) -> dict:
        """What the model takes from this data, known from the config alone (the memory plan reads it
        without building token shards): the byte tokenizer's 256 ids, or the BPE's target vocabulary."""
        a = with_defaults(cls, kwargs)
        return {"vocab_size": 256 if a["tokenizer"] == "byte" else int(a["bpe_vocab_size"])}

    @classmethod
    def example_batch(cls, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch of the shape training uses (token ids, next-token targets), for the memory plan."""
        a = with_defaults(cls, kwargs)
        ids = torch.zeros(int(a["batch_size"]), int(a["seq_len"]), dtype=torch.long)
        return ids, ids.clone()

    # --- building -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self._open()

    def setup(self, stage: str | None = None) -> None:
        self._open()

    def _open(self) -> None:
        if self._shards is not None:
            return
        root = cache_root(self.cache_dir)
        source = resolve_source(self.path, self.file_glob, self.text_field)
        documents = None
        if isinstance(source, HubSource):  # a hub dataset's fingerprint comes from `datasets` after loading
            with quiet_datasets():
                documents = load_documents(source, hf_cache_dir(root))
            source_fp = documents._fingerprint
        else:
            source_fp = source.fingerprint()
        fingerprint = data_fingerprint(source_fp, self.tokenizer_kind, self.bpe_vocab_size, self.val_fraction)
        build = functools.partial(
            build_token_shards, source=source, documents=documents, fingerprint=fingerprint,
            tokenizer=self.tokenizer_kind, bpe_vocab_size=self.bpe_vocab_size, val_fraction=self.val_fraction,
            num_proc=self.num_proc, hf_cache=hf_cache_dir(root),
        )  # called as build(tmp_dir) only if no other process has built these shards
        shards, self.built_shards = ensure_shards(root, fingerprint, build)
        for split in ("train", "val"):
            if shards.num_tokens(split) < self.seq_len + 1:
                raise UserError(
                    f"data.seq_len={self.seq_len} needs windows of {self.seq_len + 1} tokens but the {split} split of "
                    f"data.path={self.path!r} has {shards.num_tokens(split)}. Lower data.seq_len (model.seq_len), "
                    "add text, or change data.val_fraction."
                )
        self._shards, self._tokenizer = shards, load_tokenizer(self.tokenizer_kind, shards.dir)

    @property
    def shards(self) -> Shards:
        """The opened shards; built (or waited for) on first use if prepare_data()/setup() have not run."""
        self._open()
        return self._shards

    # --- what the rest of the trainer reads ------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self.shards.meta["vocab_size"])

    @property
    def fingerprint(self) -> str:
        return self.shards.meta["fingerprint"]

    def corpus_stats(self) -> dict:
        m = self.shards.meta
        return {
            "train_tokens": m["train_tokens"],
            "val_tokens": m["val_tokens"],
            "documents": m["documents"],
            "unigram_entropy_nats": m["unigram_entropy_nats"],
            "fingerprint": m["fingerprint"],
            "shard_dir": str(self.shards.dir),
        }

    def encode(self, text: str) -> list[int]:
        self._open()
        return self._tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        self._open()
        return self._tokenizer.decode(ids)

    # --- batches --------------------------------------------------------------------------------

    def windows(self, split: str, delay_s: float = 0.0) -> TokenWindows:
        return TokenWindows(
            self.shards.path(split), self.shards.meta["dtype"], self.shards.num_tokens(split), self.seq_len, delay_s
        )

    def train_batch(self, step: int, micro_step: int = 0, accumulate: int = 1, world_size: int = 1, rank: int = 0):
        """The (inputs, targets) micro-batch that rank `rank` trains on at `step`, `micro_step`: a pure function."""
        windows = self.windows("train")
        offsets = micro_batch_indices(
            self.seed, step, accumulate, world_size, rank, self.batch_size, windows.num_windows
        )[micro_step]
        return windows[offsets]

    def val_offsets(self, world_size: int = 1, rank: int = 0) -> list:
        """This rank's fixed validation batches (window offsets); the same every time."""
        windows = self.windows("val")
        offsets = evenly_spaced_offsets(self.val_batches * self.batch_size, windows.num_windows)
        return rank_val_batches(offsets, world_size, rank, self.batch_size)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("train_dataloader() reads the step, accumulation and world size from the attached Trainer")
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise UserError(
                f"trainer.max_steps={trainer.max_steps}: set it to a positive number of optimizer steps; "
                "the training data is indexed by optimizer step."
            )
        windows = self.windows("train", delay_s=self.batch_delay_s)
        sampler = StepSampler(
            current_step=lambda: trainer.global_step,
            max_steps=trainer.max_steps,
            seed=self.seed,
            accumulate=trainer.accumulate_grad_batches,
            world_size=trainer.world_size,
            rank=trainer.global_rank,
            batch_size=self.batch_size,
            num_windows=windows.num_windows,
        )
        return StepIndexedDataLoader(
            windows,
            sampler=sampler,
            batch_size=None,  # each sampled item is a whole micro-batch
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            sampling_state={"seed": self.seed, "fingerprint": self.fingerprint, "seq_len": self.seq_len,
                            "batch_size": self.batch_size},
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return DataLoader(
            self.windows("val"),
            sampler=self.val_offsets(world, rank),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # validation runs many times a run
            pin_memory=torch.cuda.is_available(),
        )
