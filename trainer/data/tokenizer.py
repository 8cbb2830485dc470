"""Tokenizers: bytes, a byte-level BPE trained on the train split, or a Hugging Face tokenizer.

`data.tokenizer` is one of
  byte    UTF-8 bytes, vocabulary 256, no separator token (the default corpus and tests);
  bpe     a byte-level BPE trained with HF `tokenizers` on the training split of the corpus;
  NAME    a Hugging Face tokenizer: a hub name (`openai-community/gpt2`), a local directory
          that `transformers.AutoTokenizer` loads (what `save_pretrained` wrote), or a
          `tokenizer.json` file. A directory and a hub name go through the same call,
          `AutoTokenizer.from_pretrained`.

Every tokenizer has `kind`, `vocab_size` (the true size: the model pads its embedding, not
this), `eos_id` / `bos_id` (or None), `encode`, `decode`, `encode_documents` and
`save_pretrained(dir)`, which writes files that `AutoTokenizer.from_pretrained(dir)` loads and
that encode the same ids (bytes and BPE are expressed as `tokenizers` models for that).
Documents are separated by the end-of-sequence token after each (else a begin-of-sequence
token before each), so training windows that span two documents see the boundary.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from trainer.data.sources import first_line, offline_reason
from trainer.errors import UserError, closest

BUILTIN = ("byte", "bpe")
TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
MIN_BPE_VOCAB = 257 + 64  # the 256 byte symbols, the end-of-text token, and room for some merges
# For a bare tokenizer.json (no tokenizer_config.json saying which token ends a document): the usual names.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class Tokenizer(Protocol):
    kind: str  # "byte", "bpe" or "hf"
    vocab_size: int
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def encode_documents(self, texts: list[str]) -> list[np.ndarray]: ...
    def save_pretrained(self, directory: str | Path) -> None: ...
    def identity(self) -> str: ...  # changes whenever the ids of some text would


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def check_tokenizer_args(spec: str, bpe_vocab_size: int) -> None:
    """What can be checked without loading anything."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"data.tokenizer={spec!r} is empty. Use byte, bpe, a Hugging Face tokenizer name "
            "(e.g. openai-community/gpt2) or a local tokenizer directory / tokenizer.json."
        )
    if spec == "bpe" and not MIN_BPE_VOCAB <= bpe_vocab_size < 1 << 32:
        raise UserError(
            f"data.bpe_vocab_size={bpe_vocab_size} is out of range: a byte-level BPE needs at least "
            f"{MIN_BPE_VOCAB} (256 bytes, end-of-text, merges). Set data.bpe_vocab_size to e.g. 4096."
        )


def separate(ids: list[int], eos_id: int | None, bos_id: int | None) -> list[int]:
    """One document's ids with its separator: EOS after it, else BOS before it, else nothing."""
    if eos_id is not None:
        return [*ids, eos_id]
    if bos_id is not None:
        return [bos_id, *ids]
    return ids


# --- bytes ------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as tokens (undecodable bytes decode to U+FFFD)."""

    kind = "byte"
    vocab_size = 256
    eos_id = None
    bos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer((t or "").encode("utf-8"), dtype=np.uint8) for t in texts]

    def identity(self) -> str:
        return "byte"

    def save_pretrained(self, directory: str | Path) -> None:
        """As a `tokenizers` BPE with no merges over the GPT-2 byte alphabet: id b is byte b."""
        from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers

        symbol = _byte_symbols()
        tok = HFTok(models.BPE(vocab={symbol[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        _save_as_transformers(tok, directory, eos=None, bos=None)


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


# --- tokenizers.Tokenizer based: the trained BPE and Hugging Face tokenizers ---------------------


class _BackendTokenizer:
    """Shared by BPE and HF tokenizers: encoding and decoding through a `tokenizers.Tokenizer`."""

    kind: str
    backend = None  # tokenizers.Tokenizer
    vocab_size: int
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.backend.encode_batch_fast([t or "" for t in texts], add_special_tokens=False)
        dtype = token_dtype(self.vocab_size)
        return [np.array(separate(e.ids, self.eos_id, self.bos_id), dtype=dtype) for e in encodings]

    def identity(self) -> str:
        if getattr(self, "_identity", None) is None:  # serialising a 50k vocabulary takes a while: once
            h = hashlib.sha256(self.backend.to_str().encode())
            h.update(f"|eos={self.eos_id}|bos={self.bos_id}".encode())
            self._identity = h.hexdigest()[:16]
        return self._identity


class BPETokenizer(_BackendTokenizer):
    """Byte-level BPE (GPT-2 style pre-tokenization) trained here with HF `tokenizers`."""

    kind = "bpe"

    def __init__(self, backend):  # backend: tokenizers.Tokenizer
        self.backend = backend
        self.vocab_size = backend.get_vocab_size()
        self.eos_id = backend.token_to_id(EOT)
        self.bos_id = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

        tok = HFTok(models.BPE())
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
    def load(cls, file: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTok

        return cls(HFTok.from_file(str(file)))

    def save(self, file: Path) -> None:
        self.backend.save(str(file))

    def save_pretrained(self, directory: str | Path) -> None:
        _save_as_transformers(self.backend, directory, eos=EOT, bos=None)


class HFTokenizer(_BackendTokenizer):
    """A Hugging Face tokenizer loaded by `transformers`; encodes through its `tokenizers` backend."""

    kind = "hf"

    def __init__(self, tok, name: str):  # tok: a transformers fast tokenizer
        self.tok, self.name = tok, name
        self.backend = tok.backend_tokenizer
        # len(tok) counts added tokens; the highest id bounds it in case ids have holes.
        self.vocab_size = max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)
        self.eos_id, self.bos_id = tok.eos_token_id, tok.bos_token_id

    def save_pretrained(self, directory: str | Path) -> None:
        self.tok.save_pretrained(str(directory))
        _loadable_by_transformers_4(Path(directory))


def load_tokenizer(spec: str) -> Tokenizer:
    """byte, or a Hugging Face tokenizer (hub name, directory or tokenizer.json). The BPE is trained, see corpus.py."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        raise ValueError("the bpe tokenizer is trained on the corpus (trainer.data.corpus.train_bpe), not loaded")
    return load_pretrained(spec)


def load_pretrained(spec: str) -> HFTokenizer:
    """The one code path for hub names, local directories and tokenizer.json files."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_tokenizer_file(path, spec)
    if not path.is_dir() and not _HUB_NAME.match(spec):
        raise UserError(
            f"data.tokenizer={spec!r} does not exist (relative paths are resolved from {Path.cwd()}).{closest(spec, BUILTIN)} "
            "Use byte, bpe, a Hugging Face tokenizer name (e.g. openai-community/gpt2), or a directory / tokenizer.json "
            "that exists."
        )
    reason = None if path.is_dir() else offline_reason(_OFFLINE_VARS)
    try:
        from transformers import AutoTokenizer

        if reason and not _hub_is_offline():
            # huggingface_hub read its offline setting at import, before the variable was set: it would still go
            # to the network, so stop here.
            raise OSError("offline")
        tok = AutoTokenizer.from_pretrained(spec)
    except Exception as e:  # network, not found, gated, malformed: the hub's errors are many types
        if path.is_dir():
            raise UserError(
                f"data.tokenizer={spec!r}: transformers.AutoTokenizer cannot load this directory ({type(e).__name__}: "
                f"{first_line(e)}). It needs the files save_pretrained writes (tokenizer.json, tokenizer_config.json)."
            ) from None
        if reason:
            raise UserError(
                f"data.tokenizer={spec!r} is not byte or bpe, not a local directory or tokenizer.json (looked in "
                f"{Path.cwd()}), and it cannot be fetched from the Hugging Face hub because {reason}="
                f"{os.environ[reason]} (offline) and it is not in the local cache.{closest(spec, BUILTIN)} To use a "
                f"local copy: on a machine with network run `python -c \"from transformers import AutoTokenizer; "
                f"AutoTokenizer.from_pretrained('{spec}').save_pretrained('DIR')\"` (or `hf download {spec} "
                f"--local-dir DIR`), then set data.tokenizer=DIR; or unset {reason}."
            ) from None
        raise UserError(
            f"data.tokenizer={spec!r} is not known: not byte or bpe, not a local directory or tokenizer.json, and "
            f"transformers.AutoTokenizer could not load it from the Hugging Face hub ({type(e).__name__}: "
            f"{first_line(e)}).{closest(spec, BUILTIN)} Check the name and the network."
        ) from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise UserError(
            f"data.tokenizer={spec!r} loads only as a slow (Python) tokenizer ({type(tok).__name__}). Give a "
            "tokenizer with a tokenizer.json (a fast tokenizer)."
        )
    return HFTokenizer(tok, spec)


def _from_tokenizer_file(path: Path, spec: str) -> HFTokenizer:
    from transformers import PreTrainedTokenizerFast

    try:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as e:  # a corrupt or foreign JSON file
        raise UserError(
            f"data.tokenizer={spec!r} is not a tokenizers JSON file ({type(e).__name__}: {first_line(e)}). "
            "Give a tokenizer.json written by `tokenizers` / `save_pretrained`, or its directory."
        ) from None
    # A bare tokenizer.json does not say which special token ends a document: take the usual names.
    specials = {t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values() if t.special}
    eos = next((n for n in _EOS_NAMES if n in specials), None)
    bos = next((n for n in _BOS_NAMES if n in specials), None)
    if eos or bos:
        tok.add_special_tokens({k: v for k, v in (("eos_token", eos), ("bos_token", bos)) if v})
    return HFTokenizer(tok, spec)


def _save_as_transformers(backend, directory: str | Path, eos: str | None, bos: str | None) -> None:
    from transformers import PreTrainedTokenizerFast

    specials = {k: v for k, v in (("eos_token", eos), ("bos_token", bos)) if v}
    PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(str(directory))
    _loadable_by_transformers_4(Path(directory))


def _loadable_by_transformers_4(directory: Path) -> None:
    """transformers 5 names its generic fast tokenizer TokenizersBackend, a class 4.x lacks; both know
    PreTrainedTokenizerFast (an alias in 5), so write that: the files then load in either."""
    config = directory / "tokenizer_config.json"
    data = json.loads(config.read_text())
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _hub_is_offline() -> bool:
    import huggingface_hub

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)
