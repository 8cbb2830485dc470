"""Tokenizers: byte, trained BPE and Hugging Face tokenizers behind one interface, each saved so that
`transformers.AutoTokenizer` loads it back and encodes the same ids; documents separated by EOS/BOS."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.hf_tokenizer import corpus_texts, local_hf_tokenizer
from trainer.data import TokenDataModule
from trainer.data.tokenizer import BPETokenizer, ByteTokenizer, load_pretrained
from trainer.errors import UserError

SAMPLES = [
    "def f(x):\n    return x + 1\n",
    "héllo wörld ✓ — naïve café, 日本語のテキスト, emoji 🙂\r\n\ttabs",
    "  leading spaces and <|endoftext|> written in the text",
    "",
    "\x00\x01 control bytes \x7f",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_corpus(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    texts = corpus_texts()
    for i, t in enumerate(texts):
        (root / f"d{i:02d}.txt").write_text(t)
    return texts


def assert_round_trip_through_transformers(tok, directory: Path) -> None:
    from transformers import AutoTokenizer

    tok.save_pretrained(directory)
    assert json.loads((directory / "tokenizer_config.json").read_text())["tokenizer_class"] != "TokenizersBackend"
    loaded = AutoTokenizer.from_pretrained(str(directory))
    for text in SAMPLES:
        ids = tok.encode(text)
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids, text
        assert loaded.decode(ids) == tok.decode(ids)
    assert loaded.eos_token_id == tok.eos_id and loaded.bos_token_id == tok.bos_id
    assert len(loaded) == tok.vocab_size


def test_byte_tokenizer_saves_as_a_transformers_tokenizer_with_the_same_ids(tmp_path):
    tok = ByteTokenizer()
    assert_round_trip_through_transformers(tok, tmp_path / "byte")
    assert tok.encode(SAMPLES[1]) == list(SAMPLES[1].encode())
    assert [a.tolist() for a in tok.encode_documents(SAMPLES)] == [list(t.encode()) for t in SAMPLES]


def test_trained_bpe_saves_as_a_transformers_tokenizer_with_the_same_ids(tmp_path):
    tok = BPETokenizer.train(corpus_texts(), 400)
    assert tok.eos_id is not None and tok.decode([tok.eos_id]) == "<|endoftext|>"
    assert_round_trip_through_transformers(tok, tmp_path / "bpe")
    # documents end with the end-of-text token
    docs = tok.encode_documents(["word1 token2", ""])
    assert docs[0].tolist() == tok.encode("word1 token2") + [tok.eos_id] and docs[1].tolist() == [tok.eos_id]


def test_a_local_tokenizer_directory_loads_through_the_hub_name_path(tmp_path, monkeypatch):
    """A directory and a hub name are the same call: AutoTokenizer.from_pretrained(spec)."""
    import transformers

    directory = local_hf_tokenizer(tmp_path / "my-tokenizer")
    calls = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda spec, **kw: calls.append(spec) or real(spec, **kw))
    tok = load_pretrained(str(directory))
    assert calls == [str(directory)]
    reference = real(str(directory))
    assert tok.kind == "hf" and tok.vocab_size == len(reference) and tok.eos_id == reference.convert_tokens_to_ids("</s>")
    for text in SAMPLES:
        assert tok.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert_round_trip_through_transformers(tok, tmp_path / "again")


def test_a_bare_tokenizer_json_finds_its_end_of_document_token(tmp_path):
    directory = local_hf_tokenizer(tmp_path / "tok", eos="<|endoftext|>")
    tok = load_pretrained(str(directory / "tokenizer.json"))
    assert tok.eos_id is not None and tok.decode([tok.eos_id]) == "<|endoftext|>"
    assert tok.encode(SAMPLES[0]) == load_pretrained(str(directory)).encode(SAMPLES[0])


def test_shards_from_a_hf_tokenizer_separate_documents_with_eos_and_take_its_vocabulary(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    directory = local_hf_tokenizer(tmp_path / "tok")
    dm = TokenDataModule(path=str(tmp_path / "corpus"), tokenizer=str(directory), cache_dir=str(tmp_path / "cache"),
                         seq_len=16, batch_size=2, val_fraction=0.1)
    dm.prepare_data()
    tok = dm.tokenizer
    assert dm.vocab_size == tok.vocab_size == len(json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"])
    train = dm.shards.tokens("train")
    assert train.dtype == np.uint16 and int(train[-1]) == tok.eos_id
    docs = [d for d in tok.decode(train.tolist()).split("</s>") if d]
    assert len(docs) == 36 and set(docs) <= set(texts)  # 40 documents, 4 held out, each whole
    assert (np.asarray(train) == tok.eos_id).sum() == 36
    # the tokenizer that wrote the shards is stored next to them
    assert load_pretrained(str(dm.shards.dir / "tokenizer")).encode(texts[0]) == tok.encode(texts[0])
    # another tokenizer is another shard set
    other = TokenDataModule(path=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), seq_len=16, batch_size=2,
                            val_fraction=0.1)
    assert other.fingerprint != dm.fingerprint


def test_a_tokenizer_without_eos_separates_documents_with_bos(tmp_path):
    write_corpus(tmp_path / "corpus")
    directory = local_hf_tokenizer(tmp_path / "tok", eos=None, bos="<s>")
    dm = TokenDataModule(path=str(tmp_path / "corpus"), tokenizer=str(directory), cache_dir=str(tmp_path / "cache"),
                         seq_len=16, batch_size=2, val_fraction=0.1)
    dm.prepare_data()
    train = np.asarray(dm.shards.tokens("train"))
    assert dm.tokenizer.eos_id is None and int(train[0]) == dm.tokenizer.bos_id
    assert (train == dm.tokenizer.bos_id).sum() == 36


def test_hub_tokenizer_name_while_offline_names_the_variable_and_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data\.tokenizer='openai-community/gpt2' .*HF_HUB_OFFLINE=1 \(offline\).*"
                                        r"save_pretrained\('DIR'\).*set data\.tokenizer=DIR"):
        load_pretrained("openai-community/gpt2")


def test_the_memory_plan_sizes_the_model_with_a_hf_tokenizers_vocabulary(tmp_path):
    """trainer.plan (and the check before launch) builds the model from the config alone: the vocabulary is the
    tokenizer's own (padded to a multiple of 64), not data.bpe_vocab_size, and no token shard is built for it."""
    from transformers import AutoTokenizer

    from trainer.config import compose_config
    from trainer.plan import _workload

    directory = local_hf_tokenizer(tmp_path / "tok")
    size = len(AutoTokenizer.from_pretrained(str(directory)))
    assert TokenDataModule.planned_attributes(tokenizer=str(directory)) == {"vocab_size": size}
    assert TokenDataModule.planned_attributes(tokenizer="byte") == {"vocab_size": 256}
    assert TokenDataModule.planned_attributes(tokenizer="bpe", bpe_vocab_size=1000) == {"vocab_size": 1000}
    cfg = compose_config([f"data.tokenizer={directory}", f"paths.cache_dir={tmp_path / 'cache'}", "logger.wandb=false"])
    assert cfg.model.vocab_size is None and cfg.data.bpe_vocab_size != size
    net = _workload(cfg).make_net()
    assert net.cfg.vocab_size == size and net.embed.weight.shape[0] == -(-size // 64) * 64
    assert not (tmp_path / "cache").exists()
