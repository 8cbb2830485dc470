"""scripts/gpu_summary.py's goal lines for the trainer-level GPU rows (issue 16 parts 4 and 5)."""
import json
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from gpu_summary import perf_goals  # noqa: E402


def _overhead(tmp_path, name, ratio, same=True):
    (tmp_path / f"{name}.json").write_text(json.dumps({
        "wall_ratio_ours_vs_handwritten": ratio, "kernels": "reference", "same_kernel_routes_in_every_variant": same,
        "variants": {"lightning": {"paired_wall_ratio": 1.01}}}))


def test_the_tiny_model_goal_says_which_ops_every_variant_ran(tmp_path):
    _overhead(tmp_path, "overhead_gpu", 1.04)
    _overhead(tmp_path, "overhead_gpu_cudagraphs", 1.2, same=False)
    lines = perf_goals(tmp_path)
    eager = next(line for line in lines if "(eager)" in line)
    graphs = next(line for line in lines if "reduce-overhead" in line)
    assert eager.startswith("- PASS") and "1.040" in eager and "kernels=reference in every variant" in eager
    assert "BUT" not in eager
    assert graphs.startswith("- MISS") and "THE VARIANTS RAN DIFFERENT OPS" in graphs
    assert "- no mfu.json: the GPT-2/1.1B rows did not run" in lines
