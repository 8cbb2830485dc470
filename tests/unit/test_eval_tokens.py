"""What evaluation counts: bytes per token (for bits per byte), the vocabulary identity, the token fingerprint."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.data.tokenizer import BPETokenizer, ByteTokenizer
from trainer.evaluate import count_bytes, decoded_byte_count, fingerprint_ids
from trainer.export.hf_tokenizer import as_transformers, load_dir, vocab_identity

TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld ☃ — ünïcödé", "import os\nprint(os.getcwd())\n"] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXTS, vocab_size=400)


def test_bytes_are_the_utf8_bytes_of_the_text_and_separators_count_zero(bpe):
    for tok in (ByteTokenizer(), bpe):
        hf = as_transformers(tok)
        ids = np.concatenate(tok.encode_documents(TEXTS[:3]))  # documents with their EOS separators (BPE)
        assert count_bytes(hf, ids) == sum(len(t.encode("utf-8")) for t in TEXTS[:3])
        # the decoding count (for tokenizers that are not byte-level) agrees where no character is split
        assert decoded_byte_count(hf, ids) == count_bytes(hf, ids)
        assert count_bytes(hf, ids, chunk=5) == count_bytes(hf, ids)


def test_vocabulary_identity_survives_save_and_load_and_tells_tokenizers_apart(tmp_path, bpe):
    for name, tok in (("byte", ByteTokenizer()), ("bpe", bpe)):
        tok.save_pretrained(tmp_path / name)
        assert vocab_identity(load_dir(tmp_path / name)) == vocab_identity(as_transformers(tok))
    assert vocab_identity(as_transformers(ByteTokenizer())) != vocab_identity(as_transformers(bpe))


def test_fingerprint_depends_on_the_ids_not_their_storage_type():
    ids = np.arange(300, dtype=np.uint16) % 256
    assert fingerprint_ids(ids) == fingerprint_ids(ids.astype(np.uint8)) == fingerprint_ids(ids.astype(np.uint32))
    assert fingerprint_ids(ids, chunk=7) == fingerprint_ids(ids)
    changed = ids.copy()
    changed[123] += 1
    assert fingerprint_ids(changed) != fingerprint_ids(ids)
