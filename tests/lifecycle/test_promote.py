"""Evaluation-gated promotion in a real MLflow registry (SQLite), through the CLI's main().

The first version (no champion: an absolute bar), accepted, refused, pending -> approve, rollback, two
promotions at once (two real processes), and bad input that must leave the registry as it was. The
decision flow calls the CLI's main() in this process (the imports of torch, transformers and mlflow
once, not per call); exit codes and messages are those `python -m trainer.promote` gives.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli
from tests.lifecycle.conftest import call
from tests.lifecycle.runs import EVAL, ok, train


def promote(*args: str, runs_dir):
    from trainer.promote import main

    return call(main, *args, f"paths.runs_dir={runs_dir}")


def registry(runs_dir):
    from mlflow import MlflowClient

    uri = f"sqlite:///{runs_dir / 'registry' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(client, name: str) -> dict[int, dict]:
    return {int(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}


def champion(client, name: str) -> int:
    return int(client.get_model_version_by_alias(name, "champion").version)


def decisions(runs_dir) -> list[dict]:
    from trainer.lifecycle.registry import DecisionLog

    log = DecisionLog(runs_dir / "registry" / "decisions.jsonl")
    assert log.verify() == []
    return log.records()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_first_accepted_refused_pending_approve_rollback(candidates, runs_dir, tmp_path):
    runs, rd = candidates, runs_dir
    # No champion and no absolute bar: refused as bad input, and nothing is written.
    proc = ok(promote(f"run.dir={runs['weak']}", "model=gpt", *EVAL, runs_dir=rd), 2)
    assert "promote.max_loss" in proc.stderr and "Traceback" not in proc.stderr
    assert registry(rd).search_registered_models() == [] and not (rd / "registry" / "decisions.jsonl").exists()

    # The first version passes the absolute bar.
    proc = ok(promote(f"run.dir={runs['weak']}", "model=gpt", "promote.max_loss=10", *EVAL, runs_dir=rd))
    assert "PROMOTED: version 1" in proc.stdout and "no champion" in proc.stdout
    client = registry(rd)
    assert champion(client, "gpt") == 1
    tags = versions(client, "gpt")[1]
    manifest = json.loads((runs["weak"] / "manifest.json").read_text())
    assert tags["trainer.run_id"] == "weak" and tags["git.sha"] == manifest["git"]["sha"]
    assert tags["data.fingerprint"] == manifest["data_fingerprint"] and len(tags["config.hash"]) == 16
    assert float(tags["eval.loss"]) > 0 and len(tags["eval.tokens_fingerprint"]) == 64 and tags["decision"] == "promoted"
    assert tags["checkpoint.step"] == "4" and len(tags["export.sha256"]) == 64
    # The version's artifact is the HF export, byte for byte.
    from trainer.lifecycle.registry import Registry

    art = Registry.open(None, rd).download(Registry.open(None, rd).get("gpt", 1), tmp_path / "dl")
    assert (art / "model.safetensors").read_bytes() == (runs["weak"] / "export" / "hf" / "model.safetensors").read_bytes()

    # Better on the same tokens: accepted. Worse: refused, both numbers printed, the champion stays.
    proc = ok(promote(f"run.dir={runs['good']}", "model=gpt", *EVAL, runs_dir=rd))
    assert "PROMOTED: version 2" in proc.stdout and "champion (v1) loss" in proc.stdout
    proc = ok(promote(f"run.dir={runs['worst']}", "model=gpt", *EVAL, runs_dir=rd), 3)
    assert "REFUSED: version 3" in proc.stdout and "champion (v2) loss" in proc.stdout
    assert champion(client, "gpt") == 2 and versions(client, "gpt")[3]["decision"] == "refused"
    assert json.loads((runs["worst"] / "promotion.json").read_text())["decision"] == "refused"

    # Approval required: pending until a person approves; approving a non-pending version is an error.
    proc = ok(promote(f"run.dir={runs['best']}", "model=gpt", "promote.require_approval=true", *EVAL, runs_dir=rd), 4)
    assert "PENDING: version 4" in proc.stdout and champion(client, "gpt") == 2
    before = (rd / "registry" / "decisions.jsonl").read_text()
    proc = ok(promote("approve", "3", "--by", "alice", "--reason", "looks fine", "model=gpt", runs_dir=rd), 2)
    assert "version 3 of 'gpt' is not pending" in proc.stderr
    assert (rd / "registry" / "decisions.jsonl").read_text() == before and versions(client, "gpt")[3]["decision"] == "refused"
    proc = ok(promote("approve", "4", "--by", "alice", "--reason", "samples read well", "model=gpt", runs_dir=rd))
    assert "APPROVED" in proc.stdout and champion(client, "gpt") == 4
    tags = versions(client, "gpt")[4]
    assert tags["decision"] == "approved" and tags["approval.by"] == "alice" and tags["approval.reason"] == "samples read well"

    # Rollback: back to the champion before (2), recorded.
    proc = ok(promote("rollback", "--by", "bob", "--reason", "regression in prod", "model=gpt", runs_dir=rd))
    assert "ROLLED BACK" in proc.stdout and champion(client, "gpt") == 2
    assert versions(client, "gpt")[4]["decision"] == "rolled_back"
    log = decisions(rd)
    assert [(r["action"], r["decision"], r["version"]) for r in log] == [
        ("promote", "promoted", 1), ("promote", "promoted", 2), ("promote", "refused", 3), ("promote", "pending", 4),
        ("approve", "approved", 4), ("rollback", "rolled_back", 4)]
    assert [r["champion_after"] for r in log] == [1, 2, 2, 2, 4, 2]
    assert log[2]["candidate"]["loss"] > log[2]["champion"]["loss"]  # refused: both numbers recorded
    assert log[2]["thresholds"] == {"min_delta": 0.0, "max_loss": None, "require_approval": False}
    assert log[4]["by"] == "alice" and log[5]["by"] == "bob" and log[5]["reason"] == "regression in prod"
    # Re-running a decided promotion (e.g. the pipeline after a kill) does not register the run twice.
    proc = ok(promote(f"run.dir={runs['worst']}", "model=gpt", *EVAL, runs_dir=rd), 3)
    assert len(versions(client, "gpt")) == 4 and len(decisions(rd)) == 6
    # A second rollback goes further back (2 -> 1), never to the version the first one left (4).
    proc = ok(promote("rollback", "--by", "bob", "--reason", "still worse", "model=gpt", runs_dir=rd))
    assert champion(client, "gpt") == 1 and decisions(rd)[-1]["champion_after"] == 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_rerun_repairs_aliases_left_behind_by_a_kill_inside_the_lock(candidates, runs_dir):
    runs, rd = candidates, runs_dir
    ok(promote(f"run.dir={runs['weak']}", "model=gpt", "promote.max_loss=10", *EVAL, runs_dir=rd))
    ok(promote(f"run.dir={runs['good']}", "model=gpt", *EVAL, runs_dir=rd))
    client = registry(rd)
    # Plant what a kill between the decision's writes and the alias moves leaves: version 2's decision tag and
    # log line are written, @champion and @candidate still point at version 1, and promotion.json is missing.
    client.set_registered_model_alias("gpt", "champion", "1")
    client.set_registered_model_alias("gpt", "candidate", "1")
    (runs["good"] / "promotion.json").unlink()
    log_before = (rd / "registry" / "decisions.jsonl").read_text()
    assert versions(client, "gpt")[2]["decision"] == "promoted" and decisions(rd)[-1]["champion_after"] == 2
    proc = ok(promote(f"run.dir={runs['good']}", "model=gpt", *EVAL, runs_dir=rd))
    assert "repaired: @champion of 'gpt' pointed at version 1" in proc.stdout and "PROMOTED: version 2" in proc.stdout
    assert champion(client, "gpt") == 2 and int(client.get_model_version_by_alias("gpt", "candidate").version) == 2
    written = json.loads((runs["good"] / "promotion.json").read_text())
    assert (written["decision"], written["version"], written["champion_after"]) == ("promoted", 2, 2)
    # The decision stands as recorded: nothing registered or logged twice.
    assert (rd / "registry" / "decisions.jsonl").read_text() == log_before and len(versions(client, "gpt")) == 2
    # Consistent now: another re-run has nothing to repair.
    proc = ok(promote(f"run.dir={runs['good']}", "model=gpt", *EVAL, runs_dir=rd))
    assert "repaired" not in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_promotions_at_once_leave_the_registry_consistent(candidates, runs_dir):
    runs, rd = candidates, runs_dir
    env_cmd = [sys.executable, "-m", "trainer.promote", "model=gpt", "promote.max_loss=10", *EVAL, f"paths.runs_dir={rd}"]
    procs = [subprocess.Popen([*env_cmd, f"run.dir={runs[name]}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("weak", "good")]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes[1] == 0 and codes[0] in (0, 3), (codes, outs)
    client = registry(rd)
    tags = versions(client, "gpt")
    assert sorted(t["trainer.run_id"] for t in tags.values()) == ["good", "weak"]  # each registered once
    good = next(v for v, t in tags.items() if t["trainer.run_id"] == "good")
    assert champion(client, "gpt") == good  # whichever went first, the better one is the champion
    log = decisions(rd)
    assert len(log) == 2
    # The second decision saw the first one's result: serialized read-decide-write.
    assert log[1]["champion_before"] == log[0]["champion_after"]
    assert {r["version"]: r["decision"] for r in log} == {v: t["decision"] for v, t in tags.items()}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bad_input_leaves_the_registry_untouched(candidates, runs_dir, tmp_path, shared_cache):
    runs, rd = candidates, runs_dir
    ok(promote(f"run.dir={runs['weak']}", "model=gpt", "promote.max_loss=10", *EVAL, runs_dir=rd))
    snapshot = lambda: ((rd / "registry" / "decisions.jsonl").read_text(), versions(registry(rd), "gpt"))  # noqa: E731
    before = snapshot()
    proc = ok(promote("approve", "1", "--by", "a", "--reason", "b", "model=gtp", runs_dir=rd), 2)
    assert "model='gtp' is not a registered model" in proc.stderr and "Did you mean 'gpt'" in proc.stderr
    proc = ok(promote("status", "model=nope", runs_dir=rd), 2)
    assert "not a registered model" in proc.stderr
    # A real process: a registry that does not answer fails in seconds (no retries for minutes), exit 2.
    proc = ok(cli("trainer.promote", f"run.dir={runs['good']}", "model=gpt", "registry.uri=http://127.0.0.1:9",
                  f"paths.runs_dir={rd}", timeout=300), 2)
    assert "unreachable" in proc.stderr and "registry.uri=http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = ok(promote("approve", "1", "model=gpt", runs_dir=rd), 2)
    assert "--by NAME and --reason TEXT" in proc.stderr
    # A candidate trained with another tokenizer (a BPE on the same corpus): the champion cannot be evaluated
    # on its tokens, so nothing is registered.
    bpe = train(tmp_path / "bpe", shared_cache, 2, "data=text", f"data.path={ROOT / 'trainer' / 'lifecycle'}",
                "data.bpe_vocab_size=400", "data.val_fraction=0.2")
    proc = ok(promote(f"run.dir={bpe}", "model=gpt", *EVAL, runs_dir=rd), 2)
    assert "another tokenizer" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot() == before
