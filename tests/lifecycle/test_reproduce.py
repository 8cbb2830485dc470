"""Reproduce: a CPU run re-run from its frozen config ends bitwise identical; changed data is named and
the verdict says it did not reproduce."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.lifecycle.runs import ok, train


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_run_reproduces_bitwise(candidates, tmp_path):
    original = candidates["weak"]
    out = tmp_path / "repro"
    proc = ok(cli("trainer.reproduce", f"run.dir={original}", f"out.dir={out}", "eval_max_tokens=2048", timeout=900))
    assert "REPRODUCED: all" in proc.stdout and "bitwise identical" in proc.stdout, proc.stdout
    report = json.loads((out / "reproduce.json").read_text())
    assert report["reproduced"] and report["weights"]["bitwise"] and report["weights"]["differing"] == []
    assert report["metrics"]["eval"]["loss"][0] == report["metrics"]["eval"]["loss"][1]
    assert report["metrics"]["final_train_loss"][0] == report["metrics"]["final_train_loss"][1]
    names = {d["what"] for d in report["environment_differences"]}
    assert "data_fingerprint" not in names and not any(n.startswith("packages.") for n in names), names
    assert (out / "config.yaml").is_file() and (out / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_changed_data_is_named_and_not_reproduced(tmp_path, shared_cache):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    src = Path(__file__).read_text()  # real text: this test's own source
    (corpus / "a.txt").write_text(src * 3)
    (corpus / "b.txt").write_text(src[::-1] * 3)
    run = train(tmp_path / "run", shared_cache, 3, "data=text", f"data.path={corpus}", "data.tokenizer=byte",
                "data.val_fraction=0.5", "data.quality.enabled=false")
    (corpus / "a.txt").write_text(src.upper() * 3)  # the data changed since the run
    proc = cli("trainer.reproduce", f"run.dir={run}", f"out.dir={tmp_path / 'repro'}", "eval_max_tokens=1024", timeout=900)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "data_fingerprint: recorded" in proc.stdout and "NOT REPRODUCED" in proc.stdout
