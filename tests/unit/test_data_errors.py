"""Bad data input: one UserError that names the key or file and the fix, and no damage to the cache."""
import json
import time
from pathlib import Path

import pytest

from trainer.data import TabularDataModule, TokenDataModule
from trainer.errors import UserError

IRIS = Path(__file__).resolve().parents[2] / "examples" / "data" / "iris.csv"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(path, cache, **kw):
    dm = TokenDataModule(path=str(path), cache_dir=str(cache), seq_len=8, batch_size=2, **kw)
    dm.prepare_data()
    return dm


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"data\.path=.*nope/corpus\.txt.* does not exist"):
        build(tmp_path / "nope" / "corpus.txt", tmp_path / "cache")


def test_directory_without_text(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02" * 100)
    (tmp_path / "d" / "empty.txt").write_text("")
    with pytest.raises(UserError, match=r"data\.path=.*has no text: its 2 file\(s\) are empty or binary"):
        build(tmp_path / "d", tmp_path / "cache")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match=r"data\.path=.*empty_dir.* is a directory with no files"):
        build(tmp_path / "empty_dir", tmp_path / "cache")
    with pytest.raises(UserError, match=r"no files matching data\.file_glob='\*\.md'"):
        build(tmp_path / "d", tmp_path / "cache", file_glob="*.md")


def test_corpus_with_zero_tokens_leaves_no_partial_shards(tmp_path):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(5)))
    with pytest.raises(UserError, match=r"data\.path=.*rows\.jsonl.* gives an empty corpus \(zero tokens"):
        build(tmp_path / "rows.jsonl", tmp_path / "cache")
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name != "hf" and not p.name.endswith(".lock")]
    assert leftovers == []


def test_hub_name_while_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data\.path='someone/corpus' is not a local file.*HF_DATASETS_OFFLINE=1"):
        build("someone/corpus", tmp_path / "cache")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE=1 \(offline\)"):
        build("wikitext", tmp_path / "cache")
    # With the variable set before `datasets` was imported, it is asked (it could serve a cached copy) and
    # answers at once, from its offline mode, without the network.
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE=1 \(offline\) and it is not in the local datasets cache"):
        build("someone/not-cached", tmp_path / "cache")
    assert time.monotonic() - start < 10


def test_unknown_tokenizer_and_bad_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("some text " * 50)
    # a name that is not byte/bpe could be a hub tokenizer: offline, the message says so and how to use a copy
    with pytest.raises(UserError, match=r"data\.tokenizer='bpee' is not byte or bpe.*HF_HUB_OFFLINE=1 \(offline\)"
                                        r".*Did you mean 'bpe'.*save_pretrained\('DIR'\).*data\.tokenizer=DIR"):
        build(tmp_path / "a.txt", tmp_path / "cache", tokenizer="bpee")
    with pytest.raises(UserError, match=r"data\.tokenizer='\./tok/nope' does not exist"):
        build(tmp_path / "a.txt", tmp_path / "cache", tokenizer="./tok/nope")
    (tmp_path / "not_a_tokenizer").mkdir()
    with pytest.raises(UserError, match=r"data\.tokenizer='not_a_tokenizer': transformers\.AutoTokenizer cannot load"):
        build(tmp_path / "a.txt", tmp_path / "cache", tokenizer="not_a_tokenizer")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match=r"data\.tokenizer='bad\.json' is not a tokenizers JSON file"):
        build(tmp_path / "a.txt", tmp_path / "cache", tokenizer="bad.json")
    assert not (tmp_path / "cache").exists() or not [p for p in (tmp_path / "cache").iterdir() if p.name != "hf"]
    with pytest.raises(UserError, match=r"data\.bpe_vocab_size=100"):
        TokenDataModule(tokenizer="bpe", bpe_vocab_size=100)
    with pytest.raises(UserError, match=r"data\.val_fraction=1\.0"):
        TokenDataModule(val_fraction=1.0)
    with pytest.raises(UserError, match=r"data\.seq_len=0"):
        TokenDataModule(seq_len=0)


def test_missing_text_field(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(UserError, match=r"data\.text_field='text' is not a column of .*rows\.jsonl \(columns: body\)"):
        build(tmp_path / "rows.jsonl", tmp_path / "cache")


def test_corpus_too_small_for_seq_len(tmp_path):
    (tmp_path / "tiny.txt").write_text("a few bytes of text, not many\n")
    with pytest.raises(UserError, match=r"data\.seq_len=64 needs windows of 65 tokens but the train split"):
        TokenDataModule(path=str(tmp_path / "tiny.txt"), cache_dir=str(tmp_path / "c"), seq_len=64).setup()


def test_tabular_bad_label_column_and_path(tmp_path):
    with pytest.raises(UserError, match=r"data\.label_column='specie' is not a column of .*iris\.csv.*Did you mean 'species'"):
        TabularDataModule(path=str(IRIS), label_column="specie").setup()
    with pytest.raises(UserError, match=r"data\.path=.*missing\.csv.* is not a file"):
        TabularDataModule(path=str(tmp_path / "missing.csv")).setup()
    (tmp_path / "t.csv").write_text("colour,size,label\nred,1,a\nblue,2,b\n")
    with pytest.raises(UserError, match=r"column 'colour' of .*t\.csv is .*not numeric"):
        TabularDataModule(path=str(tmp_path / "t.csv"), label_column="label").setup()
    (tmp_path / "one.csv").write_text("x,label\n1,a\n2,a\n3,a\n")
    with pytest.raises(UserError, match=r"data\.label_column='label' .* has a single value"):
        TabularDataModule(path=str(tmp_path / "one.csv"), label_column="label").setup()
