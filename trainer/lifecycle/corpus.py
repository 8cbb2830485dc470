"""The documents a data config trains on, read exactly as the shard builder reads them, and text statistics
shared by the data check and drift: words, shingles, length summaries, token unigram counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from trainer.errors import UserError

TOKEN_MODULE = "trainer.data.TokenDataModule"
_WORD = re.compile(r"\S+")


@dataclass
class Documents:
    texts: list[str]
    names: list[str]  # a file path (one document per text file) or "<source>#row" for each document
    is_val: np.ndarray | None  # the shard builder's validation documents (None: no document split to check)
    skipped: list[str] = field(default_factory=list)  # sources not read (streams: unbounded)


def data_kwargs(data: dict) -> dict:
    """The TokenDataModule keyword arguments of a resolved `data` section."""
    target = data.get("_target_")
    if target != TOKEN_MODULE:
        raise UserError(
            f"data._target_={target!r}: the data check and drift read text corpora (data._target_={TOKEN_MODULE}, "
            "e.g. data=stdlib or data=text data.path=...)"
        )
    return {k: v for k, v in data.items() if not k.startswith("_")}


def open_data_module(data: dict):
    """The TokenDataModule of a resolved data section, its shards built (or found in the cache) and opened."""
    from trainer.data import TokenDataModule

    dm = TokenDataModule(**data_kwargs(data))
    dm.prepare_data()
    return dm


def module_documents(dm) -> Documents:
    """Every document of a TokenDataModule's sources, read and split exactly as its shard builder does."""
    from trainer.data.corpus import document_keys, hf_cache_dir, validation_documents
    from trainer.data.shards import cache_root
    from trainer.data.sources import resolve_source

    texts, names, masks, skipped = [], [], [], []
    for i, spec in enumerate(dm.specs):
        index = i if len(dm.specs) > 1 else None
        source = resolve_source(spec, index)
        if spec.streaming:
            skipped.append(f"{source.describe()}: a stream (read lazily, never whole), not checked")
            continue
        docs = _read(source, hf_cache_dir(cache_root(dm.cache_dir)), index)
        texts += docs.texts
        names += docs.names
        # One document is split by token tail (nothing to leak); otherwise the builder's own split.
        masks.append(validation_documents(document_keys(docs.texts), dm.val_fraction) if len(docs.texts) > 1
                     else np.zeros(len(docs.texts), dtype=bool))
    return Documents(texts, names, np.concatenate(masks) if masks else None, skipped)


def read_documents(path: str, file_glob: str | None = None, text_field: str = "text", cache_dir: str | None = None) -> Documents:
    """The documents of one data path (file, directory, dataset), read by trainer.data's own reader."""
    from trainer.data.corpus import hf_cache_dir
    from trainer.data.shards import cache_root
    from trainer.data.sources import SourceSpec, resolve_source

    source = resolve_source(SourceSpec(path=str(path), file_glob=file_glob, text_field=text_field))
    return _read(source, hf_cache_dir(cache_root(cache_dir)), None)


def _read(source, hf_cache: str, index: int | None) -> Documents:
    from trainer.data.sources import TABLE_BUILDERS, FileSource, load_documents, quiet_datasets

    with quiet_datasets():
        ds = load_documents(source, hf_cache, index)
    texts = [t or "" for t in ds["text"]]
    label = source.describe()
    names = [f"{label}#{i}" for i in range(len(texts))]
    if isinstance(source, FileSource) and not any(f.suffix in TABLE_BUILDERS for f in source.files) \
            and len(source.files) == len(texts):  # plain text: one document per file, in file order
        root = Path(source.spec.path).expanduser()
        names = [_relative(f, root) for f in source.files]
    return Documents(texts, names, None)


def _relative(f: Path, root: Path) -> str:
    try:
        return str(f.relative_to(root.resolve())) if root.is_dir() else f.name
    except ValueError:
        return f.name


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def shingles(ws: list[str], k: int) -> set[str]:
    """Word k-grams; a document shorter than k words is one shingle (it matches only itself)."""
    if len(ws) < k:
        return {" ".join(ws)}
    return {" ".join(ws[i:i + k]) for i in range(len(ws) - k + 1)}


def summary(values: Iterable[float]) -> dict[str, Any]:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    q = np.percentile(a, [0, 5, 25, 50, 75, 95, 100])
    return {"count": int(a.size), "mean": float(a.mean()), "min": float(q[0]), "p5": float(q[1]), "p25": float(q[2]),
            "p50": float(q[3]), "p75": float(q[4]), "p95": float(q[5]), "max": float(q[6])}


def unigram_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)


def single_byte_ids(tokenizer) -> np.ndarray | None:
    """Ids of the tokens that stand for one byte: a byte-level BPE's fallback when no merge applies (one
    symbol of its 256-symbol byte alphabet), or a SentencePiece byte-fallback token (<0xAB>). None for the byte
    tokenizer, where every token is a byte."""
    if getattr(tokenizer, "kind", None) == "byte":
        return None
    import re

    vocab = tokenizer.backend.get_vocab()
    ids = [i for s, i in vocab.items() if len(s) == 1 or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s)]
    return np.array(sorted(ids), dtype=np.int64)


def encode_documents(tokenizer, texts: list[str], batch: int = 512) -> np.ndarray:
    """All documents' token ids, concatenated (the BPE tokenizer appends its end-of-text token per document)."""
    parts = []
    for i in range(0, len(texts), batch):
        parts.extend(tokenizer.encode_documents(texts[i:i + batch]))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
