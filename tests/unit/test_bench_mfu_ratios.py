"""benchmarks/mfu.py gives a tokens/s ratio to the hand-written baseline only between rows of one
benchmark run (one invocation, or --append invocations sharing a --bench-run id) and one configuration."""
from benchmarks.mfu import _ratios, comparable

CONFIG = {"model": "gpt2", "micro_batch": 64, "seq_len": 1024, "precision": "bf16-mixed", "compile": True,
          "compile_mode": "default", "fused_loss": False, "attention": None}


def _row(bench_run, step_s=0.1, **config):
    return {"status": "ok", "bench_run": bench_run, "batch_size": 64, "seq_len": 1024, "mean_step_s": step_s,
            "config": CONFIG | config}


def test_a_ratio_only_between_rows_of_one_benchmark_run_and_configuration():
    base = _row("run-a", 0.1)
    rows = {"handwritten": base, "ours_reference": _row("run-a", 0.125), "ours_auto": _row("run-b", 0.1),
            "ours_fused": _row(None, 0.1), "ours_reference_mb32": _row("run-a", 0.1, micro_batch=32)}
    assert comparable(rows["ours_reference"], base)
    assert not comparable(rows["ours_auto"], base)  # an earlier run's row left in mfu.json by --append
    assert not comparable(rows["ours_fused"], base)  # a row without an id (written before ids existed)
    assert _ratios(rows) == {"ours_reference": 0.8}
