"""The run's tokenizer as a Hugging Face tokenizer: what an export ships and what identifies a vocabulary.

`<run_dir>/tokenizer/` (written by rank 0 with `save_pretrained`) is the source when it exists;
older runs rebuild it from their frozen data config: the byte tokenizer becomes a byte-level BPE
without merges (token id = byte value, exactly as ours), a locally trained BPE is wrapped as it is.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import UserError

RUN_TOKENIZER_DIR = "tokenizer"


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's byte -> printable character table: byte b is the token string byte_alphabet()[b]."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return tuple(table[b] for b in range(256))


def byte_tokenizer():
    """Our byte tokenizer (id = UTF-8 byte) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_alphabet())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def as_hf_tokenizer(tok: Any):
    """A transformers tokenizer for one of the data module's tokenizers (or the object itself if it is one)."""
    if hasattr(tok, "save_pretrained") and hasattr(tok, "convert_ids_to_tokens"):
        return tok
    kind = getattr(tok, "kind", None)
    if kind == "byte":
        return byte_tokenizer()
    inner = getattr(tok, "tok", None)  # BPETokenizer wraps a tokenizers.Tokenizer
    if inner is not None:
        from transformers import PreTrainedTokenizerFast

        eot = getattr(tok, "eot_id", None)
        eos = inner.id_to_token(eot) if eot is not None else None
        return PreTrainedTokenizerFast(tokenizer_object=inner, eos_token=eos)
    raise UserError(f"cannot turn the {type(tok).__name__} tokenizer into a Hugging Face tokenizer")


def data_tokenizer(datamodule) -> Any:
    """The tokenizer a (prepared) token data module encodes with, as a transformers tokenizer."""
    from trainer.data.tokenizer import load_tokenizer

    kind = getattr(datamodule, "tokenizer_kind", None)
    if kind is None:
        raise UserError(f"{type(datamodule).__name__} is not a token data module (it has no tokenizer)")
    return as_hf_tokenizer(load_tokenizer(kind, datamodule.shards.dir))


def run_tokenizer(run_dir: Path):
    """The tokenizer a run trained with: <run_dir>/tokenizer/, else rebuilt from the frozen data config."""
    saved = Path(run_dir) / RUN_TOKENIZER_DIR
    if saved.is_dir():
        return load_dir(saved)
    from hydra.utils import instantiate

    from trainer.tracking.run_dir import load_frozen

    cfg = load_frozen(Path(run_dir) / "config.yaml")
    datamodule = instantiate(cfg.data)
    if not hasattr(datamodule, "tokenizer_kind"):
        raise UserError(f"the run in {run_dir} did not train on tokens (data._target_={cfg.data._target_})")
    datamodule.prepare_data()  # reuses the cached shards (and their tokenizer) when present
    return data_tokenizer(datamodule)


def load_dir(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise UserError(f"{directory} holds no readable tokenizer ({e})") from None


def real_vocab_size(tok) -> int:
    """Token ids the tokenizer can produce (added tokens included): the unpadded vocabulary."""
    return len(tok)


def identity(tok) -> str:
    """A short hash of the vocabulary: every token string in id order, and which ids are special.

    Two tokenizers with the same identity map text to the same ids, whichever library object
    holds them (our byte tokenizer and its exported copy have the same identity).
    """
    n = real_vocab_size(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    special = sorted(set(tok.all_special_ids))
    h = hashlib.sha256(json.dumps({"tokens": tokens, "special": special}, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def token_byte_lengths(tok) -> np.ndarray | None:
    """UTF-8 bytes each id stands for (0 for special tokens), for byte-level tokenizers; None otherwise."""
    from tokenizers import decoders

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    inverse = {c: 1 for c in byte_alphabet()}
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    lengths = np.zeros(real_vocab_size(tok), dtype=np.int64)
    for i, token in enumerate(tok.convert_ids_to_tokens(list(range(len(lengths))))):
        if i in special or token is None:
            continue
        if all(c in inverse for c in token):
            lengths[i] = len(token)  # one alphabet character per byte
        else:  # an added, non-special token stored as plain text
            lengths[i] = len(token.encode("utf-8"))
    return lengths


def save(tok, directory: Path) -> list[str]:
    """Write the tokenizer files into directory; returns their names."""
    before = set(p.name for p in Path(directory).iterdir())
    tok.save_pretrained(str(directory))
    return sorted(set(p.name for p in Path(directory).iterdir()) - before)
