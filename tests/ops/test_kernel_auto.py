"""kernels=auto: per-op choices from the measured table (trainer/ops/auto_table.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer import ops
from trainer.ops import auto, build

ROOT = Path(__file__).resolve().parents[2]


def _entry(name="NVIDIA H200", capability="9.0", sources=None, **ops_speed):
    return {"device": {"name": name, "capability": capability},
            "provenance": {"torch": "2.11.0+cu130", "date": "2026-11-27", "source": "x.json"},
            "sources": auto.source_hashes() if sources is None else sources,
            "ops": ops_speed}


def test_auto_picks_a_kernel_only_where_it_measured_faster_in_that_compile_setting():
    entry = _entry(
        rms_norm={"eager": {"fwd": 10.6, "fwd_bwd": 7.2}, "compile": {"fwd": 1.29, "fwd_bwd": 1.7}},
        swiglu={"eager": {"fwd": 8.1, "fwd_bwd": 6.5}, "compile": {"fwd": 0.95, "fwd_bwd": 1.41}},
        fused_linear_cross_entropy={"eager": {"fwd_bwd": 0.92}, "compile": {"fwd_bwd": 0.75}},
        cross_entropy={"eager": {"fwd": 1.01, "fwd_bwd": 3.0}},  # within noise of the reference: not worth it
    )
    eager = auto.choose(entry, "name", compiled=False, device="NVIDIA H200")
    compiled = auto.choose(entry, "name", compiled=True, device="NVIDIA H200")
    assert {op: c.impl for op, c in eager.items()} == {
        "rms_norm": "fused", "apply_rotary": "reference", "swiglu": "fused", "cross_entropy": "reference",
        "fused_linear_cross_entropy": "reference"}
    assert {op: c.impl for op, c in compiled.items()} == {
        "rms_norm": "fused", "apply_rotary": "reference", "swiglu": "reference", "cross_entropy": "reference",
        "fused_linear_cross_entropy": "reference"}
    assert "fwd x0.95" in compiled["swiglu"].why and "compile reference" in compiled["swiglu"].why
    assert "not measured" in compiled["apply_rotary"].why
    assert "fwd x1.29, fwd+bwd x1.70" in compiled["rms_norm"].why


def test_a_kernel_changed_since_its_measurement_gets_the_reference():
    sources = auto.source_hashes()
    stale = {**sources, "swiglu": "0" * 16}
    entry = _entry(sources=stale, rms_norm={"eager": {"fwd": 2.0, "fwd_bwd": 2.0}},
                   swiglu={"eager": {"fwd": 2.0, "fwd_bwd": 2.0}})
    picks = auto.choose(entry, "name", compiled=False, device="NVIDIA H200", sources=sources)
    assert picks["rms_norm"].impl == "fused"
    assert picks["swiglu"].impl == "reference" and "changed since they were measured" in picks["swiglu"].why


def test_the_source_hash_follows_the_op_folder_and_common(tmp_path, monkeypatch):
    for folder in ("common", "rms_norm", "rotary", "swiglu", "cross_entropy"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "k.cu").write_text(folder)
    monkeypatch.setattr(auto, "CSRC", tmp_path)
    before = auto.source_hashes()
    (tmp_path / "swiglu" / "k.cu").write_text("changed")
    after = auto.source_hashes()
    assert [op for op in auto.OPS if before[op] != after[op]] == ["swiglu"]
    (tmp_path / "common" / "k.cu").write_text("changed")
    assert all(auto.source_hashes()[op] != after[op] for op in auto.OPS)


def test_entries_match_by_name_then_capability():
    h200, a100 = _entry("NVIDIA H200", "9.0"), _entry("NVIDIA A100-SXM4-80GB", "8.0")
    table = {"entries": [a100, h200]}
    assert auto.find_entry(table, "NVIDIA H200", "9.0") == (h200, "name")
    assert auto.find_entry(table, "NVIDIA H100 80GB HBM3", "9.0") == (h200, "capability")
    assert auto.find_entry(table, "NVIDIA L4", "8.9") == (None, "none")
    picks = auto.choose(h200, "capability", compiled=False, device="NVIDIA H100 80GB HBM3")
    assert all("not measured on NVIDIA H100" in c.why for c in picks.values())
    none = auto.choose(None, "none", compiled=False, device="NVIDIA L4")
    assert all(c.impl == "reference" and "no kernel measurement for NVIDIA L4" in c.why for c in none.values())


def test_entry_from_a_benchmark_report_takes_the_worst_shape_and_skips_a_forward_that_does_more():
    report = {"results": [
        {"op": "cross_entropy", "shape": "a", "fwd_ms": {"fused": 1.0, "eager": 5.0, "compile": 1.5},
         "fwd_bwd_ms": {"fused": 2.0, "eager": 9.0, "compile": 3.0}, "error": None},
        {"op": "cross_entropy", "shape": "b", "fwd_ms": {"fused": 1.0, "eager": 4.0, "compile": 1.2},
         "fwd_bwd_ms": {"fused": 2.0, "eager": 12.0, "compile": 2.2}, "error": None},
        {"op": "fused_linear_ce", "shape": "c", "grads_in_forward": True, "fwd_ms": {"fused": 10.0, "eager": 4.0},
         "fwd_bwd_ms": {"fused": 10.0, "eager": 9.0}, "error": None},
        {"op": "swiglu", "shape": "d", "error": "skipped: time budget of 10s used"},
    ]}
    entry = auto.entry_from_report(report, {"device": "GPU X", "capability": "9.0", "torch": "t", "sources": {"a": "b"}})
    assert entry["device"] == {"name": "GPU X", "capability": "9.0"}
    assert entry["sources"] == {"a": "b"} and entry["provenance"] == {"torch": "t"}
    ce = entry["ops"]["cross_entropy"]
    assert ce["eager"]["fwd"] == 4.0 and ce["eager"]["fwd_bwd"] == 4.5
    assert ce["compile"]["fwd"] == 1.2 and ce["compile"]["fwd_bwd"] == 1.1 and ce["compile"]["shapes"] == ["a", "b"]
    assert entry["ops"]["fused_linear_cross_entropy"] == {"eager": {"fwd_bwd": 0.9, "shapes": ["c"]}}
    assert "swiglu" not in entry["ops"]


def test_the_shipped_table_holds_only_figures_from_the_raw_benchmark_json_it_names():
    table = auto.load_table()
    assert table["entries"], "the shipped table is empty"
    for entry in table["entries"]:
        prov = entry["provenance"]
        for key in ("driver", "torch", "cuda", "date", "dtype", "source"):
            assert prov.get(key), f"{entry['device']['name']}: provenance lacks {key}"
        assert set(entry["sources"]) == set(auto.OPS)
        report = json.loads((ROOT / prov["source"]).read_text())
        rebuilt = auto.entry_from_report(report, {"device": entry["device"]["name"],
                                                  "capability": entry["device"]["capability"],
                                                  "sources": entry["sources"]})
        assert rebuilt["ops"] == entry["ops"], f"{prov['source']} does not give the shipped figures"


def test_add_replaces_the_entry_of_the_same_gpu(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"about": "x", "entries": [_entry("A"), _entry("B")]}))
    new = _entry("A", rms_norm={"eager": {"fwd": 3.0}})
    table = auto.add_entry(new, path)
    assert [e["device"]["name"] for e in table["entries"]] == ["B", "A"]
    assert json.loads(path.read_text())["entries"][1]["ops"] == {"rms_norm": {"eager": {"fwd": 3.0}}}
    assert json.loads(path.read_text())["about"] == "x"


def test_auto_on_a_gpu_routes_per_op_and_reports_each(kernels_loaded, monkeypatch):
    """A GPU machine (CUDA is the boundary faked here; the CPU build stands in for the extension):
    the routes follow the table, CPU tensors keep the reference, the status names every op."""
    _fake_gpu(monkeypatch)
    monkeypatch.setattr(build, "load", lambda with_cuda, cache_dir=None: build.loaded())
    entry = _entry(rms_norm={"compile": {"fwd": 1.3, "fwd_bwd": 1.7}, "eager": {"fwd": 9.0, "fwd_bwd": 7.0}},
                   swiglu={"compile": {"fwd": 0.95, "fwd_bwd": 1.4}, "eager": {"fwd": 8.0, "fwd_bwd": 6.5}})
    monkeypatch.setattr(auto, "load_table", lambda path=None: {"entries": [entry]})
    try:
        assert ops.set_kernel_mode("auto", compiled=True) == "mixed"
        status = ops.kernel_status()
        assert status["requested"] == "auto" and status["compiled"] is True
        assert {op: s["cuda"] for op, s in status["ops"].items()} == {
            "rms_norm": "fused", "apply_rotary": "reference", "swiglu": "reference", "cross_entropy": "reference",
            "fused_linear_cross_entropy": "reference"}
        assert all(s["cpu"] == "reference" for s in status["ops"].values())
        assert status["auto_table"]["match"] == "name" and status["auto_table"]["provenance"]["torch"] == "2.11.0+cu130"
        x, w = torch.randn(3, 8), torch.ones(8)
        torch.testing.assert_close(ops.rms_norm(x, w), ops.reference.rms_norm(x, w))
        assert ops.set_kernel_mode("auto", compiled=False) == "mixed"
        assert ops.kernel_status()["ops"]["swiglu"]["cuda"] == "fused"
        assert ops.set_kernel_mode("fused") == "fused"
        assert all(s == {"cuda": "fused", "cpu": "fused", "why": "kernels=fused"} for s in ops.kernel_status()["ops"].values())
    finally:
        ops.set_kernel_mode("reference")


def _fake_gpu(monkeypatch, name="NVIDIA H200", capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)


@pytest.mark.parametrize("table", ["no entry", "every op slower", "every op changed since"])
def test_auto_that_picks_no_kernel_does_not_build_the_extension(monkeypatch, table):
    """The JIT build takes minutes on a GPU: auto decides first and builds only for a kernel it picks."""
    _fake_gpu(monkeypatch)
    entries = {"no entry": [],
               "every op slower": [_entry(swiglu={"eager": {"fwd": 0.9, "fwd_bwd": 1.5}})],
               "every op changed since": [_entry(sources={op: "0" * 16 for op in auto.OPS},
                                                 swiglu={"eager": {"fwd": 2.0, "fwd_bwd": 2.0}})]}[table]
    monkeypatch.setattr(auto, "load_table", lambda path=None: {"entries": entries})

    def no_build(*args, **kwargs):
        raise AssertionError("auto built the extension although it picked no kernel")

    monkeypatch.setattr(build, "load", no_build)
    try:
        assert ops.set_kernel_mode("auto", compiled=False) == "reference"
        status = ops.kernel_status()
        assert "every op" in status["reason"] and status["extension"] is None
        assert all(s == {"cuda": "reference", "cpu": "reference", "why": s["why"]} and s["why"]
                   for s in status["ops"].values())
        assert status["auto_table"]["device"] == "NVIDIA H200"
        # the same table with one kernel that wins: now auto does build (and here, the build raises)
        monkeypatch.setattr(auto, "load_table", lambda path=None: {"entries": [_entry(swiglu={"eager": {"fwd": 2.0, "fwd_bwd": 2.0}})]})
        with pytest.raises(AssertionError, match="auto built the extension"):
            ops.set_kernel_mode("auto", compiled=False)
    finally:
        ops.set_kernel_mode("reference")


def test_reference_status_names_every_op():
    assert ops.set_kernel_mode("reference") == "reference"
    status = ops.kernel_status()
    assert set(status["ops"]) == set(auto.OPS)
    assert all(s["cuda"] == s["cpu"] == "reference" for s in status["ops"].values())


@pytest.mark.parametrize("compiled", [False, True])
def test_auto_without_a_table_entry_is_the_reference(monkeypatch, compiled):
    monkeypatch.setattr(auto, "load_table", lambda path=None: {"entries": []})
    picks = auto.choose(*auto.find_entry(auto.load_table(), "NVIDIA H200", "9.0"), compiled, "NVIDIA H200")
    assert {c.impl for c in picks.values()} == {"reference"}


def test_add_from_the_command_line_needs_the_raw_json_in_the_repo(tmp_path, monkeypatch, capsys):
    table = tmp_path / "trainer" / "ops" / "auto_table.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps({"entries": []}))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "run.json").write_text("{}")
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps({**_entry("GPU Z"), "provenance": {"source": "/tmp/gpu_work/kernels_bench.json"}}))
    monkeypatch.setattr(auto, "TABLE", table)
    with pytest.raises(SystemExit):
        auto.main(["add", str(candidate), "--source", "docs/missing.json"])
    assert "commit the raw JSON first" in capsys.readouterr().err
    auto.main(["add", str(candidate), "--source", "docs/run.json"])
    entry = json.loads(table.read_text())["entries"][0]
    assert entry["device"]["name"] == "GPU Z" and entry["provenance"]["source"] == "docs/run.json"
