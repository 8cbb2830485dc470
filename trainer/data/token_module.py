"""TokenDataModule: a text corpus (or a weighted mixture of corpora) as memory-mapped token
shards, sampled by optimizer step.

The constructor's keyword arguments are the `data` config schema. prepare_data()/setup()
load the tokenizer (training the BPE once per corpus), build the shards of every source (once
per data fingerprint, other processes wait) and open them; after that `tokenizer`,
vocab_size, fingerprint, corpus_stats(), encode() and decode() are available.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from trainer.data.checks import require, with_defaults
from trainer.data.corpus import bpe_fingerprint, build_token_shards, data_fingerprint, hf_cache_dir, train_bpe
from trainer.data.sampling import (
    Mixture,
    MixtureWindows,
    StepIndexedDataLoader,
    StepSampler,
    TokenWindows,
    evenly_spaced_offsets,
    micro_batch_indices,
    rank_val_batches,
    realised_mixture,
    window_id,
)
from trainer.data.shards import Shards, cache_root, ensure_shards, unigram_entropy_nats
from trainer.data.sources import (
    DatasetSource,
    FileSource,
    SourceSpec,
    check_spec,
    load_documents,
    quiet_datasets,
    resolve_source,
    source_specs,
)
from trainer.data.tokenizer import TOKENIZER_FILE, BPETokenizer, Tokenizer, check_tokenizer_args, load_tokenizer
from trainer.errors import UserError

log = logging.getLogger("trainer")


class TokenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str | None = "stdlib",  # a file, directory, hub dataset name, or stdlib; null when data.sources is set
        tokenizer: str = "byte",  # byte, bpe, or a Hugging Face tokenizer: hub name, directory, tokenizer.json
        bpe_vocab_size: int = 4096,
        seq_len: int = 256,
        batch_size: int = 16,  # micro-batch per process
        val_fraction: float = 0.05,
        val_batches: int = 8,  # the whole validation set is val_batches * batch_size windows, shared by the ranks
        num_workers: int = 0,
        seed: int = 1337,
        cache_dir: str | None = None,
        text_field: str = "text",  # the text column of json/jsonl/parquet/csv rows and hub datasets
        file_glob: str | None = None,  # which files of a directory (default: all, recursively)
        name: str | None = None,  # the dataset config of a hub dataset (load_dataset(path, name)), e.g. sample-10BT
        split: str = "train",  # the dataset split to read; validation is carved out of it
        streaming: bool = False,  # read a hub dataset lazily instead of downloading it whole; needs max_tokens
        max_tokens: int | None = None,  # token budget per source (train + validation)
        sources: list | None = None,  # a weighted mixture: [{path: A, weight: 0.7}, {path: B, weight: 0.3}]
        num_proc: int = 1,  # processes for tokenization
        batch_delay_s: float = 0.0,  # debug: sleep per micro-batch in the loader, to make a run input-bound
        quality: dict | None = None,  # thresholds of the data check before training (trainer/lifecycle); carried only
    ):
        self.check_config(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        super().__init__()
        self.path, self.specs = path, _source_specs(path, sources, locals())
        self.tokenizer_spec, self.bpe_vocab_size = tokenizer, bpe_vocab_size
        self.seq_len, self.batch_size, self.val_fraction, self.val_batches = seq_len, batch_size, val_fraction, val_batches
        self.num_workers, self.seed, self.cache_dir = num_workers, seed, cache_dir
        self.num_proc, self.batch_delay_s = num_proc, batch_delay_s
        self.quality = quality
        self._shard_sets: list[Shards] | None = None
        self._tokenizer: Tokenizer | None = None
        self.built_shards = False  # whether this process built any of them (others reused them)

    def _index(self, i: int) -> int | None:
        return _index(self.path, self.specs, i)

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
        specs = _source_specs(a["path"], a["sources"], a)
        if a["tokenizer"] == "bpe":
            for i, spec in enumerate(specs):
                if spec.streaming:
                    raise UserError(
                        f"data.tokenizer=bpe is trained on the whole training split, which "
                        f"{spec.where(_index(a['path'], specs, i))}streaming=true never holds. Use a pretrained "
                        "tokenizer (e.g. data.tokenizer=openai-community/gpt2), or streaming=false."
                    )

    @classmethod
    def planned_attributes(cls, **kwargs) -> dict:
        """What the model takes from this data, known without building token shards (the memory plan
        reads it): the byte tokenizer's 256 ids, the BPE's target vocabulary (it is trained on the
        corpus), or a Hugging Face tokenizer's own vocabulary (loading it reads only its files)."""
        a = with_defaults(cls, kwargs)
        if a["tokenizer"] == "bpe":
            return {"vocab_size": int(a["bpe_vocab_size"])}
        return {"vocab_size": load_tokenizer(a["tokenizer"]).vocab_size}

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
        if self._shard_sets is not None:
            return
        root = cache_root(self.cache_dir)
        hf_cache = hf_cache_dir(root)
        sources = [resolve_source(spec, self._index(i)) for i, spec in enumerate(self.specs)]
        documents, source_fps = {}, []
        for i, source in enumerate(sources):
            if isinstance(source, FileSource):
                source_fps.append(source.fingerprint())
            elif source.spec.streaming:
                source_fps.append(source.stream_fingerprint())
            else:  # a dataset's fingerprint comes from `datasets` after loading (from its cache when it can)
                with quiet_datasets():
                    documents[i] = load_documents(source, hf_cache, self._index(i))
                source_fps.append(documents[i]._fingerprint)
        tokenizer = self._load_tokenizer(root, sources, documents, source_fps, hf_cache)
        shard_sets, built = [], False
        for i, (source, source_fp) in enumerate(zip(sources, source_fps)):
            fingerprint = data_fingerprint(source_fp, tokenizer.identity(), self.val_fraction,
                                           source.spec.max_tokens, source.spec.streaming)
            build = functools.partial(
                build_token_shards, source=source, documents=documents.get(i), fingerprint=fingerprint,
                tokenizer=tokenizer, val_fraction=self.val_fraction, num_proc=self.num_proc, hf_cache=hf_cache,
                index=self._index(i),
            )  # called as build(tmp_dir) only if no other process has built these shards
            shards, built_here = ensure_shards(root, fingerprint, build)
            built |= built_here
            for split in ("train", "val"):
                if shards.num_tokens(split) < self.seq_len + 1:
                    at = source.spec.where(self._index(i))
                    raise UserError(
                        f"data.seq_len={self.seq_len} needs windows of {self.seq_len + 1} tokens but the {split} split "
                        f"of {at}path={source.spec.path!r} has {shards.num_tokens(split)}. Lower data.seq_len "
                        f"(model.seq_len), add text, raise {at}max_tokens, or change data.val_fraction."
                    )
            shard_sets.append(shards)
        self._shard_sets, self._tokenizer, self.built_shards = shard_sets, tokenizer, built

    def _load_tokenizer(self, root, sources, documents, source_fps, hf_cache) -> Tokenizer:
        if self.tokenizer_spec != "bpe":
            return load_tokenizer(self.tokenizer_spec)
        fingerprint = bpe_fingerprint(source_fps, self.bpe_vocab_size, self.val_fraction)
        build = functools.partial(train_bpe, sources=sources, documents=documents, vocab_size=self.bpe_vocab_size,
                                  val_fraction=self.val_fraction, num_proc=self.num_proc, hf_cache=hf_cache)
        trained, _ = ensure_shards(root, fingerprint, build)
        return BPETokenizer.load(trained.dir / TOKENIZER_FILE)

    @property
    def shard_sets(self) -> list[Shards]:
        """The opened shards of each source; built (or waited for) on first use."""
        self._open()
        return self._shard_sets

    @property
    def shards(self) -> Shards:
        """The first (or only) source's shards."""
        return self.shard_sets[0]

    # --- what the rest of the trainer reads ------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were encoded with (see trainer/data/tokenizer.py for its interface)."""
        self._open()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def weights(self) -> list[float]:
        """Each source's normalised share of the training samples."""
        total = sum(s.weight for s in self.specs)
        return [s.weight / total for s in self.specs]

    @property
    def fingerprint(self) -> str:
        if len(self.shard_sets) == 1:
            return self.shards.meta["fingerprint"]
        parts = [(s.meta["fingerprint"], w) for s, w in zip(self.shard_sets, self.weights)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def corpus_stats(self) -> dict:
        metas = [s.meta for s in self.shard_sets]
        stats = {
            "train_tokens": sum(m["train_tokens"] for m in metas),
            "val_tokens": sum(m["val_tokens"] for m in metas),
            "documents": sum(m["documents"] for m in metas),
            "unigram_entropy_nats": self._unigram_entropy(),
            "fingerprint": self.fingerprint,
            "tokenizer": metas[0]["tokenizer"]["name"],
            "vocab_size": self.vocab_size,
            "shard_dir": str(self.shards.dir),
        }
        if len(metas) > 1:
            stats["sources"] = [
                {"source": m["source"], "weight": round(w, 6), "train_tokens": m["train_tokens"],
                 "val_tokens": m["val_tokens"], "shard_dir": str(s.dir)}
                for m, s, w in zip(metas, self.shard_sets, self.weights)
            ]
        return stats

    def _unigram_entropy(self) -> float:
        """Of the mixture's training-token distribution: each source's distribution weighted by its share."""
        if len(self.shard_sets) == 1:
            return self.shards.meta["unigram_entropy_nats"]
        mix = sum(w * s.unigram() / max(1, s.unigram().sum()) for s, w in zip(self.shard_sets, self.weights))
        return unigram_entropy_nats(mix)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    # --- batches --------------------------------------------------------------------------------

    def windows(self, split: str, delay_s: float = 0.0) -> TokenWindows | MixtureWindows:
        parts = [TokenWindows(s.path(split), s.meta["dtype"], s.num_tokens(split), self.seq_len)
                 for s in self.shard_sets]
        if len(parts) == 1:
            parts[0].delay_s = delay_s
            return parts[0]
        return MixtureWindows(parts, delay_s)

    def sampling_space(self, windows: TokenWindows | MixtureWindows) -> int | Mixture:
        """What training draws window ids from: one source's windows, or the weighted mixture."""
        if isinstance(windows, TokenWindows):
            return windows.num_windows
        return Mixture(tuple(p.num_windows for p in windows.parts), tuple(self.weights))

    def train_batch(self, step: int, micro_step: int = 0, accumulate: int = 1, world_size: int = 1, rank: int = 0):
        """The (inputs, targets) micro-batch that rank `rank` trains on at `step`, `micro_step`: a pure function."""
        windows = self.windows("train")
        offsets = micro_batch_indices(
            self.seed, step, accumulate, world_size, rank, self.batch_size, self.sampling_space(windows)
        )[micro_step]
        return windows[offsets]

    def val_offsets(self, world_size: int = 1, rank: int = 0) -> list:
        """This rank's fixed validation batches (window ids); the same every time. With several sources the
        val_batches * batch_size windows are shared out by weight (at least one each), evenly spaced in each."""
        windows = self.windows("val")
        count = self.val_batches * self.batch_size
        if isinstance(windows, TokenWindows):
            offsets = evenly_spaced_offsets(count, windows.num_windows)
        else:
            per_source = _share_out(count, self.weights)
            offsets = np.concatenate([
                window_id(np.full(n, s), evenly_spaced_offsets(n, part.num_windows), len(windows.parts))
                for s, (n, part) in enumerate(zip(per_source, windows.parts))
            ])
        return rank_val_batches(offsets, world_size, rank, self.batch_size)

    def realised_mixture(self, end_step: int, accumulate: int = 1, world_size: int = 1) -> list[dict]:
        """Each source's share of the training samples of steps [0, end_step), recomputed from (seed, step, slot)."""
        windows = self.windows("train")
        space = self.sampling_space(windows)
        if not isinstance(space, Mixture):
            space = Mixture((space,), (1.0,))
        counts = realised_mixture(space, self.seed, 0, end_step, self.batch_size * accumulate * world_size)
        total = max(1, int(counts.sum()))
        return [{"source": i, "path": spec.path, "weight": w, "samples": int(c), "share": int(c) / total}
                for i, (spec, w, c) in enumerate(zip(self.specs, self.weights, counts))]

    def teardown(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if stage != "fit" or trainer is None or trainer.global_rank != 0 or len(self.specs) < 2 or not trainer.global_step:
            return
        mix = self.realised_mixture(trainer.global_step, trainer.accumulate_grad_batches, trainer.world_size)
        log.info("realised data mixture over %d steps: %s", trainer.global_step, ", ".join(
            f"[{m['source']}] {m['path']} {m['share']:.3f} (weight {m['weight']:.3f}, {m['samples']} samples)" for m in mix))
        metrics = {f"data/mixture/source{m['source']}": m["share"] for m in mix}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

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
            num_windows=self.sampling_space(windows),
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


def _share_out(count: int, weights: list[float]) -> list[int]:
    """`count` split by weight, largest remainder first, at least one each."""
    exact = [max(1.0, count * w) for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[: max(0, count - sum(counts))]:
        counts[i] += 1
    return counts


def _plain(value):
    """OmegaConf containers (what Hydra passes) as plain lists and dicts."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value



def _source_specs(path, sources, a: dict) -> list[SourceSpec]:
    """The sources the data keys name: data.path alone, or the data.sources mixture (checked)."""
    common = {k: a[k] for k in ("name", "split", "text_field", "file_glob", "streaming", "max_tokens")}
    sources = _plain(sources)
    if sources:
        if path is not None:
            raise UserError(
                f"data.path={path!r} and data.sources are both set: a mixture takes its paths from data.sources. "
                "Set data.path=null (or use data=mixture)."
            )
        return source_specs(sources, common)
    if path is None:
        raise UserError("data.path is null and data.sources is empty: set data.path (a file, directory or dataset "
                        "name) or data.sources=[{path: A, weight: 0.7}, {path: B, weight: 0.3}].")
    return [check_spec(SourceSpec(path=str(path), **common))]


def _index(path, specs: list[SourceSpec], i: int) -> int | None:
    """The source's index in data.sources, or None for the single data.path source (for messages)."""
    return i if len(specs) > 1 or path is None else None
