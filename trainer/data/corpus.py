"""Corpus -> token shards: read documents, split them, tokenize, write; and train the BPE.

The split is by document and needs no seed: documents are ranked by a hash of their text and
the first round(n * val_fraction) of them (at least one, never all) go to validation. The same
corpus always gives the same split, whatever the training seed or the order of the files. A
corpus of one document (a single text file) cannot be split by document; its last
`val_fraction` of tokens become the validation split instead. A stream cannot be ranked before
it is read: there a document is in validation when its hash falls below val_fraction of the
hash range, the same rule in expectation.

Tokenization runs through `datasets.map(batched=True, num_proc=data.num_proc)`; the tokens are
written batch by batch (shards.ShardWriter), so memory does not grow with the corpus.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from trainer.data.shards import TOKENIZER_DIR, ShardWriter, unigram_entropy_nats
from trainer.data.sources import Source, load_documents, quiet_datasets, stream_documents
from trainer.data.tokenizer import TOKENIZER_FILE, BPETokenizer, Tokenizer, token_dtype
from trainer.errors import UserError

SHARD_FORMAT = 2  # bump when the bytes a build writes change for the same inputs
MAP_BATCH = 1000  # documents per `map` call and per write


def data_fingerprint(source_fingerprint: str, tokenizer_identity: str, val_fraction: float,
                     max_tokens: int | None = None, streaming: bool = False) -> str:
    """Names the shard set: the source's own fingerprint plus everything that changes the tokens or the split."""
    parts = {"format": SHARD_FORMAT, "source": source_fingerprint, "tokenizer": tokenizer_identity,
             "val_fraction": val_fraction, "max_tokens": max_tokens, "streaming": streaming}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def bpe_fingerprint(source_fingerprints: list[str], vocab_size: int, val_fraction: float) -> str:
    """Names a trained BPE: it is learned from the training split of these sources."""
    parts = {"format": SHARD_FORMAT, "sources": source_fingerprints, "bpe_vocab_size": vocab_size,
             "val_fraction": val_fraction}
    return "bpe-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


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


def document_keys(texts: list[str]) -> np.ndarray:
    """A 64-bit hash of each document's text."""
    digests = [hashlib.blake2b((t or "").encode("utf-8", "replace"), digest_size=8).digest() for t in texts]
    return np.frombuffer(b"".join(digests), dtype="<u8")


def document_split(docs, val_fraction: float) -> np.ndarray:
    """Which rows of a `datasets.Dataset` are validation documents (see the module docstring)."""
    n = len(docs)
    if n == 1:
        return np.zeros(1, dtype=bool)
    # In this process: hashing runs at ~1 GB/s, while starting map workers costs about a second.
    keys = docs.map(_document_keys, batched=True, remove_columns=["text"])
    return validation_documents(keys.data.column("key").to_numpy(), val_fraction)


def train_bpe(out_dir: Path, sources: list[Source], documents: dict[int, object], *, vocab_size: int,
              val_fraction: float, num_proc: int, hf_cache: str) -> dict:
    """Learn a byte-level BPE from the training documents of all sources; write out_dir/tokenizer.json."""

    def training_texts() -> Iterator[str]:
        for i, source in enumerate(sources):
            docs = documents.get(i)
            if docs is None:
                docs = load_documents(source, hf_cache, _index(sources, i))
            is_val = document_split(docs, val_fraction)
            yield from _texts(docs.select(np.flatnonzero(~is_val)) if len(docs) > 1 else docs)

    with quiet_datasets():
        tok = BPETokenizer.train(training_texts(), vocab_size)
    tok.save(out_dir / TOKENIZER_FILE)
    return {"kind": "bpe", "vocab_size": tok.vocab_size, "requested_vocab_size": vocab_size,
            "trained_on": [s.describe() for s in sources], "split": {"by": "document", "val_fraction": val_fraction}}


def build_token_shards(
    out_dir: Path,
    source: Source,
    documents,  # datasets.Dataset with a "text" column, or None to load it from `source`
    *,
    fingerprint: str,
    tokenizer: Tokenizer,
    val_fraction: float,
    num_proc: int,
    hf_cache: str,
    index: int | None = None,  # the source's place in data.sources, for messages
) -> dict:
    """Write train.bin / val.bin / unigram.npy / tokenizer/ into out_dir; return the meta."""
    spec = source.spec
    dtype = token_dtype(tokenizer.vocab_size)
    with ShardWriter(out_dir, dtype, tokenizer.vocab_size, spec.max_tokens) as writer, \
            TokenizeProgress(f"tokenizing {source.describe()}") as progress:
        if spec.streaming:
            rows, split = _write_stream(writer, source, tokenizer, val_fraction, hf_cache, index, progress)
        else:
            rows, split = _write_dataset(writer, source, documents, tokenizer, val_fraction, num_proc, hf_cache,
                                         index, progress)
    if writer.total == 0:
        raise _empty_corpus(source, index)
    tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
    return {
        "format": SHARD_FORMAT,
        "fingerprint": fingerprint,
        "source": source.describe(),
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": {"kind": tokenizer.kind, "name": getattr(tokenizer, "name", tokenizer.kind),
                      "identity": tokenizer.identity(), "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id,
                      "dir": TOKENIZER_DIR},
        "split": split,
        "rows_read": rows,
        "max_tokens": spec.max_tokens,
        "documents": writer.documents["train"] + writer.documents["val"],
        "train_documents": writer.documents["train"],
        "val_documents": writer.documents["val"],
        "train_tokens": writer.tokens["train"],
        "val_tokens": writer.tokens["val"],
        "unigram_entropy_nats": unigram_entropy_nats(writer.unigram) if writer.tokens["train"] else 0.0,
    }


def _write_dataset(writer: ShardWriter, source: Source, documents, tokenizer: Tokenizer, val_fraction: float,
                   num_proc: int, hf_cache: str, index: int | None, progress: "TokenizeProgress") -> tuple[int, dict]:
    with quiet_datasets():
        docs = documents if documents is not None else load_documents(source, hf_cache, index)
        n = len(docs)
        if n == 0:
            raise _empty_corpus(source, index)
        is_val = document_split(docs, val_fraction)
        procs = _procs(num_proc, n)
        progress.start(total=n, processes=procs or 1)
        encoded = docs.map(
            _EncodeDocuments(tokenizer, progress.sink),
            batched=True,
            batch_size=MAP_BATCH,
            num_proc=procs,
            remove_columns=["text"],
            # the tokens depend on the rows and the tokenizer only; naming them spares `datasets` hashing the function
            new_fingerprint=hashlib.sha256(f"{docs._fingerprint}|{tokenizer.identity()}".encode()).hexdigest()[:16],
        )
    table = encoded.data.table
    if n == 1:  # one document: its tail is the validation split
        tokens = _flat(table.column("ids").combine_chunks())
        tokens = tokens[: writer.budget] if writer.budget is not None else tokens
        cut = len(tokens) - math.ceil(len(tokens) * val_fraction)
        writer.write("train", tokens[:cut], 1)
        writer.write("val", tokens[cut:], 1)
        return 1, {"by": "token_tail (a single document)", "val_fraction": val_fraction}
    row = 0
    for batch in table.to_batches(max_chunksize=16 * MAP_BATCH):
        ids = batch.column("ids")
        lengths = ids.value_lengths().to_numpy(zero_copy_only=False)
        writer.add_documents(_flat(ids), lengths, is_val[row : row + len(lengths)])
        row += len(lengths)
        if writer.full:
            break
    del table
    _remove_cache_files(encoded)
    return n, {"by": "document", "val_fraction": val_fraction}


def _remove_cache_files(ds) -> None:
    """The tokenized arrow copy is an intermediate (as large as the shards): the shards are what is kept."""
    for f in ds.cache_files:
        Path(f["filename"]).unlink(missing_ok=True)


def _write_stream(writer: ShardWriter, source: Source, tokenizer: Tokenizer, val_fraction: float, hf_cache: str,
                  index: int | None, progress: "TokenizeProgress") -> tuple[int, dict]:
    threshold = np.uint64(min(int(val_fraction * 2.0**64), 2**64 - 1))
    progress.start(total=None, processes=1)
    encode = _EncodeDocuments(tokenizer, progress.sink)
    rows = 0
    with quiet_datasets():
        for texts in stream_documents(source, hf_cache, index, batch_size=MAP_BATCH):
            arrays = encode({"text": texts})["ids"]
            lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
            tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=writer.dtype)
            writer.add_documents(tokens, lengths, document_keys(texts) < threshold)
            rows += len(texts)
            if writer.full:
                break
    return rows, {"by": "document hash (streamed)", "val_fraction": val_fraction}


class _EncodeDocuments:
    """The `map` function: a class, not a closure, so it pickles into `num_proc` workers."""

    def __init__(self, tokenizer: Tokenizer, sink):
        self.tokenizer, self.sink = tokenizer, sink

    def __call__(self, batch: dict) -> dict:
        ids = self.tokenizer.encode_documents(batch["text"])
        self.sink.put((len(ids), sum(len(a) for a in ids)))
        return {"ids": ids}


class TokenizeProgress:
    """A progress bar over documents that also shows tokens/s.

    `map` workers are other processes: they report (documents, tokens) per batch through a queue
    (a multiprocessing manager's when there are several) that a thread here drains into the bar.
    """

    def __init__(self, desc: str):
        self.desc, self.bar, self.sink = desc, None, None
        self.tokens, self.seconds = 0, 0.0
        self._manager = self._thread = None

    def start(self, total: int | None, processes: int) -> None:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=self.desc, unit=" docs", file=sys.stderr,
                        mininterval=0.5 if tty else 30.0, dynamic_ncols=tty)
        if processes > 1:
            import multiprocessing

            self._manager = multiprocessing.Manager()
            self.sink = self._manager.Queue()
        else:
            self.sink = queue.SimpleQueue()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._drain, name="tokenize-progress", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self.sink.get()
            if item is None:
                return
            docs, tokens = item
            self.tokens += tokens
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tokens/s, {self.tokens:,} tokens", refresh=False)
            self.bar.update(docs)

    def __enter__(self) -> "TokenizeProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is None:
            return
        self.sink.put(None)
        self._thread.join(timeout=10)
        self.seconds = time.perf_counter() - self._t0
        self.bar.close()
        if self._manager is not None:
            self._manager.shutdown()


def _document_keys(batch: dict) -> dict:
    return {"key": document_keys(batch["text"])}


def _flat(ids) -> np.ndarray:
    """The values of an arrow list array (its own slice only) as numpy."""
    return ids.flatten().to_numpy(zero_copy_only=False)


def _texts(ds, batch_size: int = 256) -> Iterator[str]:
    for batch in ds.iter(batch_size=batch_size):
        yield from (t or "" for t in batch["text"])


def _procs(num_proc: int, n_docs: int) -> int | None:
    """`datasets` wants None for in-process; more processes than documents is pointless."""
    n = min(num_proc, n_docs)
    return n if n > 1 else None


def _index(sources: Iterable, i: int) -> int | None:
    return None if len(list(sources)) == 1 else i


def _empty_corpus(source: Source, index: int | None) -> UserError:
    at = source.spec.where(index)
    return UserError(
        f"{at}path={source.spec.path!r} gives an empty corpus (zero tokens after tokenization). "
        f"Point {at}path at files with text in them."
    )
