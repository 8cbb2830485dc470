"""Data through the real command line: a Hugging Face tokenizer and a CSV corpus, a weighted mixture whose
realised shares are logged, and each bad data input as one clear message with exit 2."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, train_checks_in_process
from tests.fixtures.hf_tokenizer import corpus_texts, local_hf_tokenizer
from tests.integration.test_bad_input import assert_user_error
from tests.integration.test_train_cli import TINY, ok, train

def checks(run_dir: Path, cache: Path, *extra: str):
    """The refusals of `train` (below) run in this process: tests/conftest.py train_checks_in_process."""
    return train_checks_in_process(*TINY, f"run.dir={run_dir}", f"paths.cache_dir={cache}", *extra)


def csv_corpus(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "content"])
        for i, text in enumerate(corpus_texts(60)):
            w.writerow([i, text * 3])
    return path


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_on_csv_with_a_hf_tokenizer_directory(tmp_path, shared_cache):
    from transformers import AutoTokenizer

    tok_dir = local_hf_tokenizer(tmp_path / "tokenizer")
    corpus = csv_corpus(tmp_path / "corpus.csv")
    run = tmp_path / "run"
    proc = ok(train(run, shared_cache, f"data.path={corpus}", "data.text_field=content", f"data.tokenizer={tok_dir}",
                    "trainer.max_steps=6", "data.num_proc=2"))
    assert "tokens/s" in proc.stderr and "docs/s" in proc.stderr
    reference = AutoTokenizer.from_pretrained(str(tok_dir))
    # the run dir carries the tokenizer the shards were made with, loadable by transformers
    saved = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    text = "document 3: word1 token3 and some unseen wörds"
    assert saved(text)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]
    assert saved.eos_token_id == reference.eos_token_id
    # the model takes its vocabulary from the tokenizer and pads the embedding to a multiple of 64
    spec = json.loads((run / "model.json").read_text())
    assert spec["vocab_size"] == len(reference)
    state = torch.load(run / "checkpoints" / "step-00000005" / "state.ckpt", map_location="cpu", weights_only=True)
    rows = next(v.shape[0] for k, v in state["state_dict"].items() if k.endswith("embed.weight"))
    assert rows % 64 == 0 and 0 <= rows - len(reference) < 64


@pytest.mark.slow
def test_a_mixture_run_logs_its_realised_shares(tmp_path, shared_cache):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, letter in ((a, "a"), (b, "b")):
        root.mkdir()
        for i in range(8):
            (root / f"{i}.txt").write_text(f"{letter * 50}\n" * (10 + i))
    run = tmp_path / "run"
    # the data check (on by default) rightly refuses these repeated-letter documents (near duplicates, outliers)
    ok(train(run, shared_cache, "data=mixture", f"data.sources=[{{path: {a}, weight: 0.75}}, {{path: {b}, weight: 0.25}}]",
             "trainer.max_steps=30", "data.quality.enabled=false"))
    last = [r for r in metrics_rows(run) if r.get("data/mixture/source0")][-1]
    shares = [float(last["data/mixture/source0"]), float(last["data/mixture/source1"])]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] == pytest.approx(0.75, abs=0.12)  # 120 samples
    log = (run / "logs" / "rank0.log").read_text()
    assert "realised data mixture over 30 steps" in log and "weight 0.750" in log
    # what was logged is what the (seed, step, slot) sampling drew: recomputed independently here
    from trainer.data import TokenDataModule

    dm = TokenDataModule(path=None, sources=[{"path": str(a), "weight": 0.75}, {"path": str(b), "weight": 0.25}],
                         seq_len=32, batch_size=4, cache_dir=str(shared_cache / "data"))
    windows = torch.cat([dm.train_batch(step)[0] for step in range(30)])  # (120, 32): letters and newlines
    from_a = (windows == ord("a")).any(dim=1)
    assert not (from_a & (windows == ord("b")).any(dim=1)).any()  # no window spans two sources
    assert shares[0] == pytest.approx(from_a.float().mean().item())


def test_unknown_tokenizer(tmp_path, shared_cache):
    proc = train(tmp_path / "run", shared_cache, "data.tokenizer=bytes")
    assert_user_error(proc, "data.tokenizer='bytes'", "Did you mean 'byte'", "HF_HUB_OFFLINE")
    assert not (tmp_path / "run").exists()  # nothing written: refused before the run dir is made


def test_tokenizer_vocabulary_larger_than_the_model(tmp_path, shared_cache):
    tok_dir = local_hf_tokenizer(tmp_path / "tokenizer")
    proc = train(tmp_path / "run", shared_cache, f"data.tokenizer={tok_dir}", "model.vocab_size=256")
    assert_user_error(proc, "model.vocab_size=256 is smaller than the tokenizer's vocabulary", "model.vocab_size=null")
    assert not (tmp_path / "run").exists()


def test_missing_text_field_lists_the_columns(tmp_path, shared_cache):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"body": t, "lang": "en"}) + "\n" for t in corpus_texts(5)))
    proc = train(tmp_path / "run", shared_cache, f"data.path={rows}", "data.text_field=content")
    assert_user_error(proc, "data.text_field='content' is not a column", "(columns: body, lang)")
    assert not (tmp_path / "run").exists()


def test_non_positive_mixture_weight(tmp_path, shared_cache):
    proc = checks(tmp_path / "run", shared_cache, "data=mixture", "data.sources=[{path: stdlib, weight: 1}, {path: stdlib, weight: 0}]")
    assert_user_error(proc, "data.sources[1].weight=0 is invalid", "positive")
    assert not (tmp_path / "run").exists()


def test_hub_dataset_while_offline(tmp_path, shared_cache):
    proc = train(tmp_path / "run", shared_cache, "data.path=HuggingFaceFW/fineweb-edu", "data.name=sample-10BT")  # offline: conftest
    assert_user_error(proc, "HuggingFaceFW/fineweb-edu", "offline", "hf download HuggingFaceFW/fineweb-edu --repo-type dataset",
                      "data.path=DIR data.name=sample-10BT")
    assert not (tmp_path / "run").exists()


def test_gpt2_experiment_needs_a_data_path(tmp_path):
    proc = cli("trainer.train", "experiment=gpt2_124m", f"paths.runs_dir={tmp_path}")
    assert_user_error(proc, "data.path must be set")
    assert not any(tmp_path.iterdir()), "a rejected config must not create a run dir"


def test_prepare_data_builds_the_shards_a_run_with_the_same_overrides_finds(tmp_path, shared_cache):
    corpus = csv_corpus(tmp_path / "corpus.csv")
    overrides = [f"data.path={corpus}", "data.text_field=content", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = cli("trainer.prepare_data", *overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    stats = json.loads(first.stdout)
    assert stats["built_here"] and stats["documents"] == 60 and "tokens/s" in first.stderr
    again = json.loads(cli("trainer.prepare_data", *overrides, "data.batch_size=2").stdout)  # not a data key of the shards
    assert not again["built_here"] and again["shard_dir"] == stats["shard_dir"]
    assert not list(tmp_path.glob("runs*")), "preparing writes no run dir"
    missing = cli("trainer.prepare_data", "experiment=gpt2_124m")
    assert_user_error(missing, "data.path must be set")
