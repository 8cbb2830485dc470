"""The data check finds exactly what was planted: whitespace-only and undecodable documents, exact and near
duplicates, validation documents leaked from train; it stops training (or warns) as configured."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import cli
from tests.lifecycle.corpora import planted_corpus

CHECK = ["data=text", "data.tokenizer=byte", "data.val_fraction=0.3", "model.seq_len=32", "logger.wandb=false"]


def expected_leaks(p, is_val: np.ndarray) -> set[str]:
    """Validation documents of a planted copy (exact or near) whose other member is in train."""
    index = {n: i for i, n in enumerate(p.names)}
    groups = [set(pair) for pair in p.near] + p.exact
    return {x for g in groups for x in g if is_val[index[x]] and any(not is_val[index[y]] for y in g)}


def test_planted_problems_are_found_exactly(tmp_path):
    from trainer.config import DataQualityConfig
    from trainer.data import TokenDataModule
    from trainer.lifecycle.corpus import module_documents
    from trainer.lifecycle.data_check import document_checks

    p = planted_corpus(tmp_path / "corpus")
    docs = module_documents(TokenDataModule(path=str(p.root), val_fraction=0.3, cache_dir=str(tmp_path / "cache")))
    assert docs.names == p.names
    is_val = docs.is_val
    found = document_checks(docs.texts, is_val, DataQualityConfig())
    name = lambda ids: {docs.names[i] for i in ids}  # noqa: E731

    assert found["documents"] == len(p.names)
    assert name(found["empty"]["documents"]) == p.whitespace
    assert name(found["undecodable"]["documents"]) == p.undecodable
    assert sorted(map(name, found["exact_duplicates"]["groups"]), key=sorted) == sorted(p.exact, key=sorted)
    assert found["exact_duplicates"]["count"] == 3
    assert {frozenset(name([q["a"], q["b"]])) for q in found["near_duplicates"]["pairs"]} == {frozenset(x) for x in p.near}
    assert found["near_duplicates"]["count"] == len(p.near)
    leaks = expected_leaks(p, is_val)
    assert leaks, "the planted corpus should straddle the split (change the seed)"
    assert name(found["leakage"]["documents"]) == leaks
    # Every non-empty document has ~600 words (empties are counted as empties, not as short).
    assert found["length_outliers"]["count"] == 0 and found["lengths"]["words"]["max"] >= 600


def test_cli_reports_and_exits_3_on_failure(tmp_path, shared_cache):
    p = planted_corpus(tmp_path / "corpus")
    out = tmp_path / "report"
    proc = cli("trainer.data_check", *CHECK, f"data.path={p.root}", f"paths.cache_dir={shared_cache}", f"out={out}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    failed = {c["check"] for c in report["checks"] if not c["passed"]}
    assert failed == {"empty", "undecodable", "exact_duplicates", "near_duplicates", "leakage"}, report["checks"]
    assert "exact_duplicates: 3 documents" in proc.stdout
    html = (out / "report.html").read_text()
    assert "Data check: FAILED" in html and p.near[0][1] in html
    assert report["tokens"]["train_tokens"] > 0 and report["tokens"]["tokenizer"] == "byte"
    # Raising the thresholds named in the report makes it pass (exit 0).
    relaxed = ["data.quality.max_empty_fraction=0.1", "data.quality.max_undecodable_fraction=0.1",
               "data.quality.max_exact_duplicate_fraction=0.1", "data.quality.max_near_duplicate_fraction=0.2",
               "data.quality.max_leaked_val_fraction=1.0"]
    proc = cli("trainer.data_check", *CHECK, f"data.path={p.root}", f"paths.cache_dir={shared_cache}", f"out={out}", *relaxed)
    assert proc.returncode == 0, proc.stdout + proc.stderr


TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "trainer.max_steps=2", "trainer.val_every_steps=2",
        "data.batch_size=2", "data.val_batches=1", "trainer.progress_bar=false"]


@pytest.mark.slow
def test_training_stops_before_step_one_or_warns(tmp_path, shared_cache):
    p = planted_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    proc = cli("trainer.train", *CHECK, *TINY, f"data.path={p.root}", f"paths.cache_dir={shared_cache}", f"run.dir={run}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the data check failed before training" in proc.stderr and "data.quality.on_fail=warn" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "checkpoints").exists() and (run / "data_check" / "report.json").is_file()
    proc = cli("trainer.train", *CHECK, *TINY, f"data.path={p.root}", f"paths.cache_dir={shared_cache}", f"run.dir={run}",
               "data.quality.on_fail=warn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training anyway" in proc.stdout + proc.stderr
    assert (run / "checkpoints" / "step-00000002").is_dir()
    # The run's report carries the data check's section.
    proc = cli("trainer.report", f"run.dir={run}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (run / "report" / "index.html").read_text()
    assert "Data check: FAILED" in html and "Exact duplicates" in html
