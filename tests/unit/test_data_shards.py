"""Token shards: built once per fingerprint, reproducible, split by document, safe under concurrency."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from trainer.data import TokenDataModule
from trainer.data.corpus import data_fingerprint
from trainer.data.sources import SourceSpec, resolve_source, stdlib_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_corpus(root: Path, n: int = 20, prefix: str = "doc") -> dict[str, str]:
    """n small text files with distinct contents; returns {name: text}."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(n):
        text = f"# document {i}\n" + "".join(f"line {j} of document {i}: {'xyz' * (i % 5)}\n" for j in range(30))
        (root / f"{prefix}{i:02d}.txt").write_text(text)
        texts[f"{prefix}{i:02d}.txt"] = text
    return texts


def open_module(path, cache, **kw) -> TokenDataModule:
    kw = {"seq_len": 16, "batch_size": 4, "val_fraction": 0.2, "val_batches": 2, **kw}
    dm = TokenDataModule(path=str(path), cache_dir=str(cache), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def shard_bytes(dm) -> dict[str, bytes]:
    root = Path(dm.corpus_stats()["shard_dir"])
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_shards_are_byte_identical_for_the_same_fingerprint_and_reused(tmp_path):
    write_corpus(tmp_path / "corpus")
    a = open_module(tmp_path / "corpus", tmp_path / "cache_a")
    b = open_module(tmp_path / "corpus", tmp_path / "cache_b")
    assert a.built_shards and b.built_shards
    assert a.fingerprint == b.fingerprint
    assert shard_bytes(a) == shard_bytes(b)
    again = open_module(tmp_path / "corpus", tmp_path / "cache_a")
    assert not again.built_shards and again.corpus_stats() == a.corpus_stats()
    # the seed and seq_len do not change the tokens: the same shards serve them
    other = open_module(tmp_path / "corpus", tmp_path / "cache_a", seed=5, seq_len=8)
    assert not other.built_shards and other.fingerprint == a.fingerprint
    assert [p.name for p in (tmp_path / "cache_a").iterdir() if ".tmp-" in p.name] == []


def test_a_changed_file_changes_the_fingerprint_and_rebuilds(tmp_path):
    write_corpus(tmp_path / "corpus")
    before = open_module(tmp_path / "corpus", tmp_path / "cache")
    old_tokens = shard_bytes(before)
    (tmp_path / "corpus" / "doc03.txt").write_text("completely different text\n" * 40)
    after = open_module(tmp_path / "corpus", tmp_path / "cache")
    assert after.fingerprint != before.fingerprint
    assert after.built_shards
    assert shard_bytes(after) != old_tokens
    assert Path(before.corpus_stats()["shard_dir"]).is_dir()  # the old set is left alone
    (tmp_path / "corpus" / "extra.txt").write_text("one more document\n")
    assert open_module(tmp_path / "corpus", tmp_path / "cache").fingerprint != after.fingerprint
    # other split or tokenizer parameters name other shard sets too
    assert open_module(tmp_path / "corpus", tmp_path / "cache", val_fraction=0.3).fingerprint != after.fingerprint


def test_split_is_by_whole_documents_and_does_not_depend_on_names_or_order(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    dm = open_module(tmp_path / "corpus", tmp_path / "cache")
    val = dm.shards.tokens("val").tobytes().decode()
    train = dm.shards.tokens("train").tobytes().decode()
    val_docs = [name for name, t in texts.items() if t in val]
    train_docs = [name for name, t in texts.items() if t in train]
    assert len(val_docs) == 4 and len(train_docs) == 16  # round(20 * 0.2) whole documents
    assert set(val_docs).isdisjoint(train_docs)
    assert val == "".join(texts[n] for n in val_docs)  # each validation document whole, in corpus order
    assert train == "".join(texts[n] for n in train_docs)
    stats = dm.corpus_stats()
    assert stats["documents"] == 20 and stats["train_tokens"] + stats["val_tokens"] == sum(map(len, texts.values()))
    # the same contents under other names (so listed in another order) split the same way
    for i, (name, text) in enumerate(reversed(texts.items())):
        (tmp_path / "renamed").mkdir(exist_ok=True)
        (tmp_path / "renamed" / f"z{i:02d}.txt").write_text(text)
    renamed = open_module(tmp_path / "renamed", tmp_path / "cache")
    renamed_val = renamed.shards.tokens("val").tobytes().decode()
    assert sorted(t for t in texts.values() if t in renamed_val) == sorted(texts[n] for n in val_docs)


def test_a_single_document_is_split_by_its_tail(tmp_path):
    text = "".join(f"sentence number {i}.\n" for i in range(200))
    (tmp_path / "one.txt").write_text(text)
    dm = open_module(tmp_path / "one.txt", tmp_path / "cache", val_fraction=0.1)
    train, val = dm.shards.tokens("train").tobytes(), dm.shards.tokens("val").tobytes()
    assert train + val == text.encode() and len(val) == -(-len(text) // 10)
    assert dm.shards.meta["split"]["by"].startswith("token_tail")


def test_json_and_parquet_rows_are_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "corpus").mkdir()
    rows = [{"body": f"json row {i} " * 10, "id": i} for i in range(6)]
    (tmp_path / "corpus" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"body": [f"parquet row {i} " * 10 for i in range(4)]}), tmp_path / "corpus" / "b.parquet")
    dm = open_module(tmp_path / "corpus", tmp_path / "cache", text_field="body", val_fraction=0.3)
    stats = dm.corpus_stats()
    assert stats["documents"] == 10
    everything = dm.shards.tokens("train").tobytes() + dm.shards.tokens("val").tobytes()
    assert len(everything) == sum(len(r["body"]) for r in rows) + sum(len(f"parquet row {i} " * 10) for i in range(4))


def test_bpe_tokenizer_is_trained_on_the_train_split_and_round_trips(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    dm = open_module(tmp_path / "corpus", tmp_path / "cache", tokenizer="bpe", bpe_vocab_size=400)
    shard_dir = Path(dm.corpus_stats()["shard_dir"])
    assert (shard_dir / "tokenizer" / "tokenizer.json").is_file()  # the tokenizer that wrote these ids
    assert 257 < dm.vocab_size <= 400 and dm.shards.meta["dtype"] == "uint16"
    sample = "line 7 of document 12: xyzxyz\n"
    ids = dm.encode(sample)
    assert len(ids) < len(sample.encode())  # merges learned from the corpus compress it
    assert dm.decode(ids) == sample
    eot = dm.shards.meta["tokenizer"]["eos_id"]
    assert eot == dm.tokenizer.eos_id and dm.tokenizer.decode([eot]) == "<|endoftext|>"
    train_text = dm.decode(dm.shards.tokens("train").tolist())
    docs = [d for d in train_text.split("<|endoftext|>") if d]
    assert len(docs) == 16 and all(d in texts.values() for d in docs)
    assert int(dm.shards.tokens("train")[-1]) == eot
    x, y = dm.train_batch(step=0)
    assert x.shape == (4, 16) and int(x.max()) < dm.vocab_size
    # the requested BPE size names another training run; shards are keyed by the tokenizer that came out of it:
    # this corpus holds only ~50 merges, so both runs learn the same vocabulary and share the shards
    other = open_module(tmp_path / "corpus", tmp_path / "cache", tokenizer="bpe", bpe_vocab_size=450)
    assert len([p for p in (tmp_path / "cache").glob("bpe-*") if p.is_dir()]) == 2
    assert other.vocab_size == dm.vocab_size and other.fingerprint == dm.fingerprint and not other.built_shards
    # the byte tokenizer is another shard set
    assert open_module(tmp_path / "corpus", tmp_path / "cache").fingerprint != dm.fingerprint


def test_default_corpus_is_the_stdlib_at_byte_level(tmp_path):
    files = sorted(stdlib_dir().glob("*.py"))
    dm = TokenDataModule(cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    stats = dm.corpus_stats()
    assert dm.vocab_size == 256 and dm.shards.meta["dtype"] == "uint8"
    assert stats["documents"] == len([f for f in files if f.stat().st_size > 0]) > 100
    assert stats["train_tokens"] + stats["val_tokens"] == sum(f.stat().st_size for f in files)
    assert 2.5 < stats["unigram_entropy_nats"] < np.log(256)
    x, y = dm.train_batch(step=0)
    assert x.shape == (16, 256) and (x[:, 1:] == y[:, :-1]).all()
    assert dm.decode(dm.encode("def f():\n")) == "def f():\n"


BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from trainer.data import TokenDataModule
    dm = TokenDataModule(path=sys.argv[1], cache_dir=sys.argv[2], seq_len=16, batch_size=4, val_fraction=0.2)
    print("READY", flush=True)
    dm.prepare_data()
    print(json.dumps({"built": dm.built_shards, "dir": dm.corpus_stats()["shard_dir"], "done": time.time()}))
    """
)


@pytest.mark.slow  # two real processes, each importing torch and Lightning
def test_concurrent_processes_build_once_and_the_others_wait(tmp_path):
    write_corpus(tmp_path / "corpus", n=40)
    cache = tmp_path / "cache"
    cache.mkdir()
    fp = data_fingerprint(resolve_source(SourceSpec(str(tmp_path / "corpus"))).fingerprint(), "byte", 0.2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Hold the build lock so both processes are certainly contending when it is released.
    with FileLock(str(cache / f"{fp}.lock")):
        procs = [
            subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(tmp_path / "corpus"), str(cache)],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "READY"
        time.sleep(1.0)  # both are now blocked on the lock
        assert all(p.poll() is None for p in procs)
        released = time.time()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]  # one built, the other waited and reused
    assert results[0]["dir"] == results[1]["dir"] == str(cache / fp)
    assert all(r["done"] > released for r in results)
    assert json.loads((cache / fp / "meta.json").read_text())["fingerprint"] == fp
    assert [p.name for p in cache.iterdir() if ".tmp-" in p.name] == []
