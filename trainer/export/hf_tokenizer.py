"""The run's tokenizer as `transformers` sees it: the files an export ships, and a vocabulary identity
that survives save_pretrained/from_pretrained (our byte tokenizer and its exported copy agree).

`<run_dir>/tokenizer/` (rank 0 writes it with the data tokenizer's `save_pretrained`) is the source;
a run from before that existed rebuilds it from its frozen data config.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from trainer.errors import UserError
from trainer.tracking.run_dir import RunDir

def load_dir(directory: Path):
    """A transformers tokenizer from a directory save_pretrained wrote."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{directory} holds no tokenizer transformers can load ({type(e).__name__}: {e})") from None


def as_transformers(tok):
    """A data tokenizer (trainer/data/tokenizer.py) as a transformers tokenizer, through its own save_pretrained."""
    if hasattr(tok, "convert_ids_to_tokens"):
        return tok
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return load_dir(Path(tmp))


def save_run_tokenizer(run_dir: Path, out: Path) -> None:
    """Write the run's tokenizer files into `out`: a copy of <run_dir>/tokenizer/, else rebuilt."""
    saved = RunDir(run_dir).tokenizer
    if saved.is_dir():
        for f in sorted(saved.iterdir()):
            if f.is_file():
                shutil.copyfile(f, Path(out) / f.name)
        return
    _data_module(run_dir).tokenizer.save_pretrained(out)


def run_tokenizer(run_dir: Path):
    """The transformers tokenizer the run trained with."""
    saved = RunDir(run_dir).tokenizer
    return load_dir(saved) if saved.is_dir() else as_transformers(_data_module(run_dir).tokenizer)


def _data_module(run_dir: Path):
    from hydra.utils import instantiate

    from trainer.tracking.run_dir import load_frozen

    cfg = load_frozen(RunDir(run_dir).config)
    datamodule = instantiate(cfg.data)
    if not hasattr(datamodule, "tokenizer"):
        raise UserError(f"the run in {run_dir} did not train on tokens (data._target_={cfg.data._target_})")
    datamodule.prepare_data()  # reuses the cached shards (and the trained BPE) when present
    return datamodule


def vocab_identity(tok) -> str:
    """A short hash of a transformers tokenizer's vocabulary: every token string in id order and which
    ids are special. Two tokenizers with the same identity turn text into the same ids (same model
    and merges assumed: the vocabularies of different tokenizers differ in practice)."""
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = sorted(set(tok.all_special_ids))
    h = hashlib.sha256(json.dumps({"tokens": tokens, "special": special}, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> frozenset:
    from tokenizers import pre_tokenizers

    return frozenset(pre_tokenizers.ByteLevel.alphabet())


def token_byte_lengths(tok) -> np.ndarray | None:
    """UTF-8 bytes each id stands for (0 for special tokens), for byte-level tokenizers; None for others."""
    from tokenizers import decoders

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    alphabet = _byte_level_alphabet()
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    lengths = np.zeros(len(tok), dtype=np.int64)
    for i, token in enumerate(tok.convert_ids_to_tokens(list(range(len(lengths))))):
        if i in special or token is None:
            continue
        # one alphabet character per byte; an added plain-text token counts its UTF-8 bytes
        lengths[i] = len(token) if all(c in alphabet for c in token) else len(token.encode("utf-8"))
    return lengths
