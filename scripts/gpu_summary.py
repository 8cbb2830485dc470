"""The short report of scripts/gpu_check.sh: $OUT/summary.md from the step log, the convergence
curves' statistics, the kernel benchmark's table and goals, what kernels=auto would pick from this
run's measurements, and the test counts.

    python scripts/gpu_summary.py --work /tmp/gpu_work --out gpu_out --budget 480 --elapsed 431
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def convergence_section(path: Path) -> list[str]:
    if not path.is_file():
        return ["## Convergence (tests/gpu/test_convergence_gpu.py)", "", "no convergence.json: the test did not get "
                "as far as writing it (see convergence.log in gpu_logs.tgz)"]
    data = json.loads(path.read_text())
    lines = ["## Convergence (tests/gpu/test_convergence_gpu.py)", "",
             f"{data['device']}, torch {data['torch']}, bf16 autocast, {len(data['seeds'])} seeds per arm, "
             f"{data['steps']} steps; per run exp(mean log loss) over the window; p: one-sided exact permutation "
             f"test of 'worse than the reference runs' (fails below {data['alpha']})", "",
             "| arm | window | per seed | mean | p |", "|---|---|---|---|---|"]
    for arm, windows in data["window_log_means"].items():
        for window, values in windows.items():
            p = data["p_values"].get(arm, {}).get(window)
            per_seed = ", ".join(f"{math.exp(v):.4f}" for v in values)
            mean = math.exp(sum(values) / len(values))
            lines.append(f"| {arm} | {window} | {per_seed} | {mean:.4f} | {'-' if p is None else f'{p:.3g}'} |")
    return lines


def auto_section(candidate: Path) -> list[str]:
    if not candidate.is_file():
        return []
    from trainer.ops import auto

    entry = json.loads(candidate.read_text())
    lines = ["## What kernels=auto would pick from this run", "",
             f"(to use it: copy kernels_bench.json to docs/gpu/, then `python -m trainer.ops.auto add {candidate.name} --source docs/gpu/<that file>`)", "",
             "| op | eager | torch.compile |", "|---|---|---|"]
    eager = auto.choose(entry, "name", False, entry["device"]["name"], sources=entry["sources"])
    compiled = auto.choose(entry, "name", True, entry["device"]["name"], sources=entry["sources"])
    for op in eager:
        lines.append(f"| {op} | {eager[op].impl}: {_short(eager[op].why)} | {compiled[op].impl}: {_short(compiled[op].why)} |")
    return lines


def _short(why: str) -> str:
    return why.split(" vs the ")[0] if " vs the " in why else why


def test_counts(work: Path) -> list[str]:
    out = []
    for name in ("convergence", "gpu_tests", "obs"):
        log = _read(work / f"{name}.log") or _read(work / name / "pytest.log")
        if not log:
            out.append(f"{name}: not run")
            continue
        found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", log, flags=re.M)
        out.append(f"{name}: {found[-1] if found else 'no pytest summary line (see the log)'}")
        failed = re.findall(r"^FAILED (\S+)", log, flags=re.M)
        out += [f"  FAILED {f}" for f in failed[:10]]
    return out


def perf_goals(bench: Path) -> list[str]:
    """Issue 16 parts 4 and 5, from this run's rows: the same-run ratios and the best MFU per model."""
    lines = ["## Framework overhead and MFU goals (benchmarks/mfu.py, benchmarks/overhead.py)", ""]
    mfu_path = bench / "mfu.json"
    if mfu_path.is_file():
        data = json.loads(mfu_path.read_text())
        rows, peak, ratios = data["variants"], data.get("peak_bf16_tflops"), data.get("ratios_vs_handwritten", {})
        for name, goal in (("ours_reference", 1.0), ("ours_auto", 1.0)):
            r = ratios.get(name)
            lines.append(f"- {'PASS' if r is not None and r >= goal else 'MISS' if r is not None else 'NOT RUN'} "
                         f"GPT-2-124M {name} / hand-written + compile, tokens/s, same benchmark run: "
                         f"{'-' if r is None else f'{r:.3f}'} (goal >= {goal:.2f})")
        for model, label, goal in (("gpt2", "GPT-2-124M", 0.50), ("1b", "~1.1B", 0.50)):
            best = None
            for name, r in rows.items():
                if r.get("status") == "ok" and (r.get("config") or {}).get("model") == model and peak:
                    m = r["batch_size"] * r["seq_len"] / r["mean_step_s"] * r["flops_per_token"] / (peak * 1e12)
                    best = max(best or (0, ""), (m, name))
            lines.append(f"- {'NOT RUN' if best is None else 'PASS' if best[0] >= goal else 'MISS'} {label} MFU, best row: "
                         f"{'-' if best is None else f'{100 * best[0]:.1f}% ({best[1]})'} (goal >= {100 * goal:.0f}%)")
    else:
        lines.append("- no mfu.json: the GPT-2/1.1B rows did not run")
    for name, label in (("overhead_gpu", "eager"), ("overhead_gpu_cudagraphs", "torch.compile reduce-overhead")):
        path = bench / f"{name}.json"
        if path.is_file():
            o = json.loads(path.read_text())
            r = o["wall_ratio_ours_vs_handwritten"]
            lines.append(f"- {'PASS' if r <= 1.05 else 'MISS'} tiny model on the GPU ({label}): ours / hand-written wall "
                         f"time per step {r:.3f}, plain Lightning {o['variants']['lightning']['paired_wall_ratio']:.3f} "
                         f"(goal <= 1.05; kernels={o.get('kernels', '?')} in every variant"
                         f"{'' if o.get('same_kernel_routes_in_every_variant', True) else ', BUT THE VARIANTS RAN DIFFERENT OPS'})")
        else:
            lines.append(f"- NOT RUN tiny model on the GPU ({label})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--elapsed", type=int, required=True)
    args = parser.parse_args(argv)
    lines = [f"# GPU check ({args.elapsed} s of a {args.budget} s budget)", "", "```", _read(args.work / "machine.txt").strip(),
             "", _read(args.work / "steps.txt").strip(), "```", "", "## Tests", "", "```", *test_counts(args.work), "```", ""]
    lines += convergence_section(args.out / "convergence.json") + [""]
    bench = _read(args.out / "kernels_bench.md")
    lines += ["## Kernels (benchmarks/kernels.py)", "", bench.split("\n", 2)[-1].strip() if bench else "no benchmark output", ""]
    lines += auto_section(args.out / "auto_table_candidate.json") + [""]
    lines += perf_goals(args.work / "bench") + [""]
    for table in sorted((args.work / "bench").glob("*_table.md")):
        lines += [f"## {table.stem}", "", table.read_text().strip(), ""]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
