"""Memory-mapped token shards, keyed by a data fingerprint, built once by one process.

Layout of `<cache root>/<fingerprint>/`: train.bin and val.bin (flat token ids, dtype in the
meta), meta.json (counts, dtype, tokenizer, split, unigram entropy), unigram.npy (training
token counts per id) and tokenizer/ (the tokenizer that produced the ids, as
`save_pretrained` writes it). A trained BPE has its own entry, `bpe-<fingerprint>/`. The
directory is built under a temporary name and renamed into place while holding a file lock: a process that finds meta.json finds a complete shard set, and processes
that arrive during a build wait on the lock, then reuse what was built.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock, Timeout

from trainer.errors import UserError
from trainer.files import atomic_write_bytes, atomic_write_json, fsync_path

META = "meta.json"
UNIGRAM = "unigram.npy"  # training-token counts per id
TOKENIZER_DIR = "tokenizer"  # the tokenizer that wrote the ids, as save_pretrained writes it
SPLITS = ("train", "val")
LOCK_TIMEOUT_S = 3 * 3600  # a slow build of a big corpus is still a build; a dead builder releases the lock


def cache_root(cache_dir: str | None) -> Path:
    """`cache_dir`, or ${TRAINER_CACHE:-~/.cache/trainer}/data."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("TRAINER_CACHE", "~/.cache/trainer")).expanduser() / "data"


@dataclass(frozen=True)
class Shards:
    """An opened, complete shard directory."""

    dir: Path
    meta: dict

    @classmethod
    def open(cls, directory: Path) -> "Shards":
        return cls(Path(directory), json.loads((Path(directory) / META).read_text()))

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.bin"

    def num_tokens(self, split: str) -> int:
        return int(self.meta[f"{split}_tokens"])

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.path(split), dtype=self.meta["dtype"], mode="r", shape=(self.num_tokens(split),))

    def unigram(self) -> np.ndarray:
        return np.load(self.dir / UNIGRAM)


def ensure_shards(root: Path, fingerprint: str, build: Callable[[Path], dict]) -> tuple[Shards, bool]:
    """The shards for `fingerprint`, built by `build(tmp_dir) -> meta` if missing.

    Returns (shards, built_here). `build` writes the .bin files into tmp_dir and returns the
    meta; meta.json is written last, then the directory is renamed into place.
    """
    final = root / fingerprint
    if (final / META).is_file():
        return Shards.open(final), False
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the token cache {root} ({e.strerror}). Set data.cache_dir (or TRAINER_CACHE) to a "
            "writable directory."
        ) from e
    lock_path = root / f"{fingerprint}.lock"
    try:
        with FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S):
            if (final / META).is_file():  # built by another process while we waited
                return Shards.open(final), False
            tmp = Path(tempfile.mkdtemp(prefix=f"{fingerprint}.tmp-", dir=root))
            try:
                meta = build(tmp)
                atomic_write_json(tmp / META, meta)
                if final.exists():  # a leftover without meta.json: never completed, safe to replace under the lock
                    shutil.rmtree(final)
                os.rename(tmp, final)
                fsync_path(root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return Shards.open(final), True
    except Timeout:
        raise UserError(
            f"waited {LOCK_TIMEOUT_S}s for {lock_path}: another process is still building the token shards for "
            f"this corpus. Let it finish, or give this run its own data.cache_dir."
        ) from None


class ShardWriter:
    """Appends documents' tokens to train.bin / val.bin as they are tokenized, within a token budget.

    Memory stays at one batch of documents whatever the corpus size. Also counts the training
    tokens per id (unigram.npy), from which the unigram entropy of any mixture follows.
    """

    def __init__(self, directory: Path, dtype: np.dtype, vocab_size: int, max_tokens: int | None):
        self.dir, self.dtype, self.budget = Path(directory), np.dtype(dtype), max_tokens
        self.files = {split: open(self.dir / f"{split}.bin", "wb") for split in SPLITS}
        self.tokens = {split: 0 for split in SPLITS}
        self.documents = {split: 0 for split in SPLITS}
        self.unigram = np.zeros(vocab_size, dtype=np.int64)

    @property
    def total(self) -> int:
        return sum(self.tokens.values())

    @property
    def full(self) -> bool:
        return self.budget is not None and self.total >= self.budget

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray, is_val: np.ndarray) -> None:
        """tokens: the documents' ids back to back; lengths: ids per document; is_val: per document."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.budget is not None and self.total + tokens.size > self.budget:
            room = self.budget - self.total  # keep whole documents, then a cut last one, then stop
            ends = np.cumsum(lengths)
            n = int(np.searchsorted(ends, room, side="left")) + 1
            lengths = np.minimum(lengths[:n], np.maximum(room - (ends[:n] - lengths[:n]), 0))
            tokens, is_val = tokens[:room], is_val[:n]
        in_val = np.repeat(np.asarray(is_val, dtype=bool), lengths)
        self.write("train", tokens[~in_val], int((~is_val & (lengths > 0)).sum()))
        self.write("val", tokens[in_val], int((is_val & (lengths > 0)).sum()))

    def write(self, split: str, tokens: np.ndarray, documents: int) -> None:
        tokens = np.asarray(tokens).astype(self.dtype, copy=False)
        tokens.tofile(self.files[split])
        self.tokens[split] += tokens.size
        self.documents[split] += documents
        if split == "train":
            self.unigram += np.bincount(tokens, minlength=len(self.unigram))[: len(self.unigram)]

    def close(self) -> None:
        for split, f in self.files.items():
            if not f.closed:
                f.close()
                fsync_path(self.dir / f"{split}.bin")
        buffer = io.BytesIO()
        np.save(buffer, self.unigram)
        atomic_write_bytes(self.dir / UNIGRAM, buffer.getvalue())

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            for f in self.files.values():
                f.close()


def unigram_entropy_nats(counts: np.ndarray) -> float:
    """Entropy of a token frequency distribution: the loss of a model that ignores context."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
