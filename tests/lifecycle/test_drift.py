"""Drift: flags a shifted corpus, rarely flags a resample of the same corpus, exits 3 when drifted."""
from __future__ import annotations

import json
import random

import pytest

from tests.conftest import cli
from tests.lifecycle.corpora import prose_paragraphs, stdlib_paragraphs, write_jsonl

SAMPLE = 1000  # documents on each side


@pytest.fixture(scope="module")
def code():
    return stdlib_paragraphs()


def test_at_most_one_false_alarm_in_20_resamples_and_a_shift_is_flagged(code):
    from trainer.data.tokenizer import ByteTokenizer
    from trainer.config import DriftConfig
    from trainer.lifecycle.drift import measure

    cfg, tok = DriftConfig(), ByteTokenizer()
    alarms = []
    for seed in range(20):
        docs = random.Random(seed).sample(code, 2 * SAMPLE)  # two disjoint random samples of the same corpus
        report = measure(docs[:SAMPLE], docs[SAMPLE:], tok, cfg)
        assert report["metrics"]["doc_length_psi"]["judged"]
        alarms.append(report["drifted"])
    assert sum(alarms) <= 1, alarms
    prose = random.Random(0).sample(prose_paragraphs(), SAMPLE)
    shifted = measure(random.Random(0).sample(code, SAMPLE), prose, tok, cfg)
    assert shifted["drifted"]
    assert shifted["metrics"]["token_js_distance"]["drifted"] and shifted["metrics"]["doc_length_psi"]["drifted"]


def test_byte_fallback_and_new_vocabulary_rise_on_another_script(code, tmp_path):
    """A BPE learned on code falls back to bytes on Greek text, whose words are all new."""
    from trainer.data.tokenizer import BPETokenizer
    from trainer.config import DriftConfig
    from trainer.lifecycle.drift import measure

    ref = random.Random(1).sample(code, SAMPLE)
    tok = BPETokenizer.train(iter(ref), 1024)
    greek = str.maketrans("abcdefghiklmnoprstuxyz", "αβψδεφγηικλμνοπρστυχυζ")
    cur = [p.lower().translate(greek) for p in random.Random(2).sample(prose_paragraphs(), SAMPLE)]
    report = measure(ref, cur, tok, DriftConfig())
    fallback = report["metrics"]["byte_fallback_increase"]
    assert fallback["drifted"] and fallback["current_rate"] > fallback["reference_rate"] + 0.1, fallback
    assert report["metrics"]["new_vocab_share"]["value"] > 0.5
    same = measure(ref, random.Random(3).sample(code, SAMPLE), tok, DriftConfig())
    assert not same["metrics"]["byte_fallback_increase"]["drifted"] and not same["drifted"], same["metrics"]


def test_cli_exit_codes_and_reports(code, tmp_path):
    docs = random.Random(0).sample(code, 3 * 300)
    ref = write_jsonl(tmp_path / "ref.jsonl", docs[:300])
    same = write_jsonl(tmp_path / "same.jsonl", docs[300:600])
    prose = write_jsonl(tmp_path / "prose.jsonl", random.Random(0).sample(prose_paragraphs(), 300))
    proc = cli("trainer.drift", f"reference={ref}", f"current={same}", f"out={tmp_path / 'a'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no drift" in proc.stdout and (tmp_path / "a" / "drift.html").is_file()
    proc = cli("trainer.drift", f"reference={ref}", f"current={prose}", f"out={tmp_path / 'b'}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "b" / "drift.json").read_text())
    assert report["drifted"] and report["metrics"]["token_js_distance"]["drifted"]
    proc = cli("trainer.drift", f"reference={tmp_path / 'nope'}", f"current={prose}")
    assert proc.returncode == 2 and "reference=" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("trainer.drift", f"reference={ref}", f"current={prose}", "drift.js_treshold=0.2")
    assert proc.returncode == 2 and "drift.js_threshold" in proc.stderr


def test_a_run_dir_reference_uses_the_runs_corpus_and_tokenizer(code, tmp_path, shared_cache):
    """reference=RUN_DIR reads the run's frozen data config: its corpus, its (BPE) tokenizer."""
    from trainer.config import compose_config
    from trainer.tracking.run_dir import freeze_config

    corpus = write_jsonl(tmp_path / "corpus" / "code.jsonl", random.Random(4).sample(code, 400))
    run = tmp_path / "run"
    run.mkdir()
    freeze_config(compose_config(["data=text", f"data.path={corpus}", "data.bpe_vocab_size=512", "model.seq_len=32",
                                  f"paths.cache_dir={shared_cache}"]), run)
    prose = write_jsonl(tmp_path / "prose.jsonl", random.Random(5).sample(prose_paragraphs(), 400))
    proc = cli("trainer.drift", f"reference={run}", f"current={prose}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    reports = list((run / "drift").glob("*/drift.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["tokenizer"] == "bpe" and report["reference_documents"] == 400
    assert report["metrics"]["byte_fallback_increase"]["judged"]
