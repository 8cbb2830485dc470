"""Tokenizers: bytes (the default, vocab 256) or a byte-level BPE trained locally with HF `tokenizers`.

Both turn a batch of documents into arrays of token ids for `Dataset.map`; the BPE one also
appends an end-of-text token after each document, so windows that span two documents see the
boundary. The BPE vocabulary is learned from the training split only and saved next to the
shards it produced.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from trainer.errors import UserError, closest

TOKENIZERS = ("byte", "bpe")
BPE_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
MIN_BPE_VOCAB = 257 + 64  # the 256 byte symbols, the end-of-text token, and room for some merges


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def encode_documents(self, texts: list[str]) -> list[np.ndarray]: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def check_tokenizer_args(kind: str, bpe_vocab_size: int) -> None:
    if kind not in TOKENIZERS:
        raise UserError(
            f"data.tokenizer={kind!r} is not known. Use one of: {', '.join(TOKENIZERS)}.{closest(kind, TOKENIZERS)}"
        )
    if kind == "bpe" and not MIN_BPE_VOCAB <= bpe_vocab_size < 1 << 32:
        raise UserError(
            f"data.bpe_vocab_size={bpe_vocab_size} is out of range: a byte-level BPE needs at least "
            f"{MIN_BPE_VOCAB} (256 bytes, end-of-text, merges). Set data.bpe_vocab_size to e.g. 4096."
        )


class ByteTokenizer:
    """UTF-8 bytes as tokens."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer((t or "").encode("utf-8"), dtype=np.uint8) for t in texts]


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization) from HF `tokenizers`."""

    kind = "bpe"

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)
        self._dtype = token_dtype(self.vocab_size)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, whatever the corpus
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, directory: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(directory) / BPE_FILE)))

    def save(self, directory: Path) -> None:
        self.tok.save(str(Path(directory) / BPE_FILE))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tok.encode_batch([t or "" for t in texts])
        return [np.array([*e.ids, self.eot_id], dtype=self._dtype) for e in encodings]


def load_tokenizer(kind: str, directory: Path) -> Tokenizer:
    return ByteTokenizer() if kind == "byte" else BPETokenizer.load(directory)
