"""Memory-mapped token shards, keyed by a data fingerprint, built once by one process.

Layout of `<cache root>/<fingerprint>/`: train.bin and val.bin (flat token ids, dtype in the
meta), meta.json (counts, dtype, tokenizer, split, unigram entropy) and, for BPE,
tokenizer.json. The directory is built under a temporary name and renamed into place while
holding a file lock: a process that finds meta.json finds a complete shard set, and processes
that arrive during a build wait on the lock, then reuse what was built.
"""
from __future__ import annotations

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
from trainer.files import atomic_write_json, fsync_path

META = "meta.json"
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


def write_tokens(directory: Path, split: str, tokens: np.ndarray) -> None:
    path = Path(directory) / f"{split}.bin"
    with open(path, "wb") as f:
        tokens.tofile(f)
        f.flush()
        os.fsync(f.fileno())
