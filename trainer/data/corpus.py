"""Corpus -> token shards: read documents, split them, fit the tokenizer, tokenize, write.

The split is by document and needs no seed: documents are ranked by a hash of their text and
the first round(n * val_fraction) of them (at least one, never all) go to validation. The same
corpus always gives the same split, whatever the training seed or the order of the files. A corpus of one
document (a single text file) cannot be split by document; its last `val_fraction` of tokens
become the validation split instead.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from trainer.data.sources import HubSource, LocalSource, load_documents, quiet_datasets
from trainer.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, token_dtype
from trainer.data.shards import write_tokens
from trainer.errors import UserError

SHARD_FORMAT = 1  # bump when the bytes a build writes change for the same inputs


def data_fingerprint(source_fingerprint: str, tokenizer: str, bpe_vocab_size: int, val_fraction: float) -> str:
    """Names the shard set: the source's own fingerprint plus everything that changes the tokens or the split."""
    parts = {"format": SHARD_FORMAT, "source": source_fingerprint, "tokenizer": tokenizer, "val_fraction": val_fraction}
    if tokenizer == "bpe":
        parts["bpe_vocab_size"] = bpe_vocab_size
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def hf_cache_dir(root: Path) -> str:
    """Where `datasets` keeps its arrow caches: $HF_DATASETS_CACHE if set, else next to our shards."""
    return os.environ.get("HF_DATASETS_CACHE") or str(root / "hf")


def validation_documents(keys: np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean mask of the documents that form the validation split (at least one, never all)."""
    n = len(keys)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.argsort(keys, kind="stable")[:n_val]] = True
    return is_val


def unigram_entropy_nats(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the token frequency distribution: the loss of a model that ignores context."""
    counts = np.bincount(tokens, minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def build_token_shards(
    out_dir: Path,
    source: LocalSource | HubSource,
    documents,  # datasets.Dataset with a "text" column, or None to load it from `source`
    *,
    fingerprint: str,
    tokenizer: str,
    bpe_vocab_size: int,
    val_fraction: float,
    num_proc: int,
    hf_cache: str,
) -> dict:
    """Write train.bin / val.bin (and tokenizer.json for BPE) into out_dir; return the meta."""
    with quiet_datasets():
        docs = documents if documents is not None else load_documents(source, hf_cache)
        n_docs = len(docs)
        if n_docs == 0:
            raise _empty_corpus(source)
        keys = docs.map(_document_keys, batched=True, num_proc=_procs(num_proc, n_docs), remove_columns=["text"])
        is_val = validation_documents(_column(keys, "key"), val_fraction) if n_docs > 1 else np.zeros(1, bool)

        tok: Tokenizer
        if tokenizer == "bpe":
            train_docs = docs.select(np.flatnonzero(~is_val)) if n_docs > 1 else docs
            tok = BPETokenizer.train(_texts(train_docs), bpe_vocab_size)
            tok.save(out_dir)
            tok_id = hashlib.sha256(tok.tok.to_str().encode()).hexdigest()[:16]
        else:
            tok, tok_id = ByteTokenizer(), "byte"
        encoded = docs.map(
            _EncodeDocuments(tok),
            batched=True,
            num_proc=_procs(num_proc, n_docs),
            remove_columns=["text"],
            new_fingerprint=hashlib.sha256(f"{docs._fingerprint}|{tok_id}".encode()).hexdigest()[:16],
        )
        ids = encoded.data.column("ids").combine_chunks()

    dtype = token_dtype(tok.vocab_size)
    tokens = ids.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if tokens.size == 0:
        raise _empty_corpus(source)
    if n_docs > 1:
        in_val = np.repeat(is_val, ids.value_lengths().to_numpy(zero_copy_only=False))
        train, val = tokens[~in_val], tokens[in_val]
        split = {"by": "document", "val_fraction": val_fraction}
    else:
        cut = len(tokens) - math.ceil(len(tokens) * val_fraction)
        train, val = tokens[:cut], tokens[cut:]
        split = {"by": "token_tail (a single document)", "val_fraction": val_fraction}
    write_tokens(out_dir, "train", train)
    write_tokens(out_dir, "val", val)
    return {
        "format": SHARD_FORMAT,
        "fingerprint": fingerprint,
        "source": source.describe(),
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "tokenizer": {
            "kind": tok.kind,
            "file": "tokenizer.json" if tok.kind == "bpe" else None,
            "eot_id": getattr(tok, "eot_id", None),
            **({"requested_vocab_size": bpe_vocab_size} if tok.kind == "bpe" else {}),
        },
        "split": split,
        "documents": n_docs,
        "train_documents": int(n_docs - is_val.sum()),
        "val_documents": int(is_val.sum()),
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        "unigram_entropy_nats": unigram_entropy_nats(train, tok.vocab_size),
    }


class _EncodeDocuments:
    """The `map` function: a class, not a closure, so it pickles into `num_proc` workers."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: dict) -> dict:
        return {"ids": self.tokenizer.encode_documents(batch["text"])}


def _document_keys(batch: dict) -> dict:
    digests = [hashlib.blake2b((t or "").encode("utf-8", "replace"), digest_size=8).digest() for t in batch["text"]]
    return {"key": np.frombuffer(b"".join(digests), dtype="<u8")}


def _column(ds, name: str) -> np.ndarray:
    return ds.data.column(name).to_numpy()


def _texts(ds, batch_size: int = 256) -> Iterator[str]:
    for batch in ds.iter(batch_size=batch_size):
        yield from (t or "" for t in batch["text"])


def _procs(num_proc: int, n_docs: int) -> int | None:
    """`datasets` wants None for in-process; more processes than documents is pointless."""
    n = min(num_proc, n_docs)
    return n if n > 1 else None


def _empty_corpus(source: LocalSource | HubSource) -> UserError:
    return UserError(
        f"data.path={getattr(source, 'spec', None) or source.describe()!r} gives an empty corpus (zero tokens after "
        "tokenization). Point data.path at files with text in them."
    )
