"""Sources: CSV tables, dataset configs and splits (a dataset repository read by `datasets.load_dataset`,
as a hub name is), streaming with a token budget, and the progress bar's documents/s and tokens/s."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from trainer.data import TokenDataModule
from trainer.errors import UserError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def open_module(path, cache, **kw) -> TokenDataModule:
    kw = {"seq_len": 16, "batch_size": 2, "val_fraction": 0.1, "val_batches": 2, **kw}
    dm = TokenDataModule(path=str(path), cache_dir=str(cache), **kw)
    dm.prepare_data()
    return dm


def all_text(dm) -> str:
    return (dm.shards.tokens("train").tobytes() + dm.shards.tokens("val").tobytes()).decode()


@pytest.fixture(scope="module")
def dataset_repo(tmp_path_factory) -> Path:
    """A dataset repository as the hub stores one (and `hf download --repo-type dataset` copies it): data files
    per config and split, declared in the README's YAML header."""
    repo = tmp_path_factory.mktemp("repo")
    for config, n in (("small", 20), ("large", 50)):
        for split in ("train", "test"):
            (repo / "data" / config).mkdir(parents=True, exist_ok=True)
            rows = [{"content": f"[{config}/{split} {i}] " + "some words " * 15, "id": i} for i in range(n)]
            (repo / "data" / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = "configs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{c}/{s}.jsonl\n" for s in ("train", "test"))
        for c in ("small", "large")
    )
    (repo / "README.md").write_text(f"---\n{header}---\n# A test dataset\n")
    return repo


def test_csv_rows_are_documents(tmp_path):
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "body"])
        for i in range(30):
            w.writerow([f"t{i}", f'row {i}: "quoted", with commas,\nand a second line\n'])
    dm = open_module(tmp_path / "t.csv", tmp_path / "cache", text_field="body")
    assert dm.corpus_stats()["documents"] == 30
    text = all_text(dm)
    assert 'row 7: "quoted", with commas,\nand a second line\n' in text and "t7" not in text
    with pytest.raises(UserError, match=r"data\.text_field='bdy' is not a column of .*t\.csv \(columns: title, body\)\. "
                                        r"Did you mean 'body'"):
        open_module(tmp_path / "t.csv", tmp_path / "cache", text_field="bdy")


def test_dataset_config_and_split_of_a_dataset_repository(tmp_path, dataset_repo):
    dm = open_module(dataset_repo, tmp_path / "cache", name="large", split="test", text_field="content")
    text = all_text(dm)
    assert dm.corpus_stats()["documents"] == 50
    assert "[large/test 0]" in text and "[large/train" not in text and "[small/" not in text
    default = open_module(dataset_repo, tmp_path / "cache", name="small", text_field="content")
    assert default.corpus_stats()["documents"] == 20 and "[small/train 3]" in all_text(default)
    assert default.fingerprint != dm.fingerprint
    with pytest.raises(UserError, match=r"data\.name='huge'.*BuilderConfig 'huge' not found.*Check the name, data\.name"):
        open_module(dataset_repo, tmp_path / "cache", name="huge", text_field="content")
    with pytest.raises(UserError, match=r"data\.split='validation'.*Unknown split"):
        open_module(dataset_repo, tmp_path / "cache", name="large", split="validation", text_field="content")
    with pytest.raises(UserError, match=r"data\.text_field='text' is not a column .*\(columns: content, id\)"):
        open_module(dataset_repo, tmp_path / "cache", name="large")


def test_name_or_split_on_a_file_is_a_user_error(tmp_path):
    (tmp_path / "a.txt").write_text("text " * 100)
    with pytest.raises(UserError, match=r"data\.path=.*a\.txt.* is a file: data\.name and data\.split select"):
        open_module(tmp_path / "a.txt", tmp_path / "cache", split="test")


def test_streaming_reads_until_the_token_budget(tmp_path, dataset_repo):
    stream = open_module(dataset_repo, tmp_path / "cache", name="large", text_field="content", streaming=True,
                         max_tokens=3000, val_fraction=0.2)
    stats = stream.corpus_stats()
    assert stats["train_tokens"] + stats["val_tokens"] == 3000
    assert stats["val_tokens"] > 0 and stats["train_tokens"] > stats["val_tokens"]
    text = all_text(stream)
    assert text.startswith("[large/train 0]") or "[large/train 0]" in text
    assert "[large/train 49]" not in text  # the budget ran out long before the end
    # the same stream and budget give the same shards; the budget names them
    again = open_module(dataset_repo, tmp_path / "cache2", name="large", text_field="content", streaming=True,
                        max_tokens=3000, val_fraction=0.2)
    assert again.fingerprint == stream.fingerprint
    assert np.array_equal(again.shards.tokens("train"), stream.shards.tokens("train"))
    bigger = open_module(dataset_repo, tmp_path / "cache", name="large", text_field="content", streaming=True,
                         max_tokens=4000, val_fraction=0.2)
    assert bigger.fingerprint != stream.fingerprint
    with pytest.raises(UserError, match=r"data\.text_field='body' is not a column of .*large.*\(columns: content, id\)"):
        open_module(dataset_repo, tmp_path / "cache", name="large", text_field="body", streaming=True, max_tokens=100)


def test_a_token_budget_without_streaming_cuts_the_corpus(tmp_path, dataset_repo):
    dm = open_module(dataset_repo, tmp_path / "cache", name="large", text_field="content", max_tokens=2500)
    stats = dm.corpus_stats()
    assert stats["train_tokens"] + stats["val_tokens"] == 2500


def test_streaming_needs_a_budget_and_a_pretrained_tokenizer():
    with pytest.raises(UserError, match=r"data\.streaming=true needs data\.max_tokens"):
        TokenDataModule(path="HuggingFaceFW/fineweb-edu", streaming=True)
    with pytest.raises(UserError, match=r"data\.tokenizer=bpe is trained on the whole training split.*data\.streaming=true"):
        TokenDataModule(path="HuggingFaceFW/fineweb-edu", streaming=True, max_tokens=1000, tokenizer="bpe")
    with pytest.raises(UserError, match=r"data\.max_tokens=0 is invalid"):
        TokenDataModule(max_tokens=0)


def test_hub_dataset_while_offline_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for streaming in (False, True):
        with pytest.raises(UserError, match=r"data\.path='HuggingFaceFW/fineweb-edu' is not a local file.*HF_DATASETS_OFFLINE=1"
                                            r".*hf download HuggingFaceFW/fineweb-edu --repo-type dataset --local-dir DIR.*"
                                            r"data\.path=DIR data\.name=sample-10BT.*HF_HUB_OFFLINE and HF_DATASETS_OFFLINE"):
            open_module("HuggingFaceFW/fineweb-edu", tmp_path / "cache", name="sample-10BT", streaming=streaming,
                        max_tokens=1000 if streaming else None)


def test_tokenization_shows_documents_and_tokens_per_second(tmp_path, capfd):
    (tmp_path / "corpus").mkdir()
    for i in range(12):
        (tmp_path / "corpus" / f"{i}.txt").write_text(f"document {i} " * 50)
    for num_proc in (1, 2):
        dm = open_module(tmp_path / "corpus", tmp_path / f"cache{num_proc}", num_proc=num_proc)
        err = capfd.readouterr().err
        total = dm.corpus_stats()["train_tokens"] + dm.corpus_stats()["val_tokens"]
        assert "12/12" in err and "docs/s" in err and "tokens/s" in err, err
        assert f"{total:,} tokens" in err  # the workers' counts reach the bar (through a manager queue for 2)
