"""Start-up: seconds from the command to the end of the first training step, and import times.

    python benchmarks/startup.py [--repeats 3] [--json out.json] [--plot out.png]

Runs the real command, unmodified, `python -m trainer.train trainer.max_steps=1
checkpoint.every_n_steps=1 run.dir=<tmp>` (the default experiment; the stdlib shards are
already in the cache, as on every run after the first), with and without W&B, alternating,
`--repeats` times each. The end of step 1 is read from the run itself: the step-1 checkpoint's
manifest is written right after that step, and its save time (in the run manifest) is
subtracted. Then `python -X importtime` of the same command gives the import time by package,
and `import trainer.train` alone is timed. Goal: first step within 10 s.

`--baseline-tree DIR` (another checkout, e.g. `git worktree add /tmp/base <commit>`) also runs the defaults
from that tree's code and configs, alternating with this tree's, and reports this tree's wall and CPU
seconds as ratios of it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, describe, machine, markdown_table, write_json  # noqa: E402

GOAL_S = 10.0
BASE = ["trainer.max_steps=1", "checkpoint.every_n_steps=1", "trainer.progress_bar=false"]
# Five constructor arguments the YAML leaves out (the defaults' values, so the same work): each needs `++`
# for Hydra, which trainer.config.normalize_overrides adds.
ARGUMENTS = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.seq_len=256", "data.val_batches=8"]
CONFIGS = {"defaults (W&B offline, CSV)": [], "logger.wandb=false": ["logger.wandb=false"],
           "defaults + 5 constructor arguments": ARGUMENTS}


def _env(tree: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_step(overrides: list[str], workdir: Path, tree: Path = ROOT) -> dict:
    """Run the command (the code and configs of `tree`); return seconds to the end of step 1 and to the
    process exit, and the CPU seconds of the process and the children it waited for."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, "-m", "trainer.train", *BASE, *overrides, f"run.dir={run_dir}"]
    t0, cpu0 = time.time(), _children_cpu_s()
    proc = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=600)
    total, cpu = time.time() - t0, _children_cpu_s() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    manifest = next((run_dir / "checkpoints").glob("*/manifest.json"))
    save_s = json.loads((run_dir / "manifest.json").read_text())["summary"]["checkpoint_save_s"][0]
    step_end = manifest.stat().st_mtime - save_s
    return {"first_step_s": step_end - t0, "exit_s": total, "cpu_s": cpu, "checkpoint_save_s": save_s}


def import_profile(top: int = 10) -> tuple[list[tuple[str, float]], float]:
    """Import time of the real command by package (the self time of all its modules, s), largest
    first; and `import trainer.train` alone (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-X", "importtime", "-m", "trainer.train", *BASE, f"run.dir={tmp}/run"]
        err = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600).stderr
    by_package: dict[str, float] = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            by_package[package] = by_package.get(package, 0.0) + int(m.group(1)) / 1e6
    rows = sorted(by_package.items(), key=lambda r: -r[1])
    alone = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import trainer.train"], cwd=ROOT, env=_env(), check=True)
        alone.append(time.perf_counter() - t0)
    return rows[:top] + [("(all packages)", sum(by_package.values()))], statistics.median(alone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="another checkout whose defaults run alternating with this tree's, as the baseline")
    args = ap.parse_args()
    info = machine()
    plan = {name: (overrides, ROOT) for name, overrides in CONFIGS.items()}
    if args.baseline_tree:
        base = _commit(args.baseline_tree)
        for name in list(CONFIGS):
            if name != "logger.wandb=false":
                plan[f"{name}, baseline tree ({base})"] = (CONFIGS[name], args.baseline_tree.resolve())
    runs: dict[str, list[dict]] = {name: [] for name in plan}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        first_step(list(CONFIGS.values())[0], Path(tmp))  # shards into the cache, files into the page cache
        for r in range(args.repeats):
            for name, (overrides, tree) in plan.items():
                res = first_step(overrides, Path(tmp), tree)
                runs[name].append(res)
                print(f"repeat {r} {name}: first step at {res['first_step_s']:.2f} s, exit at {res['exit_s']:.2f} s, "
                      f"{res['cpu_s']:.2f} CPU-s", flush=True)
    imports, import_train_s = import_profile()
    keys = ("first_step_s", "exit_s", "cpu_s")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    best = {name: {k: min(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    summary = {"machine": info, "commit": _commit(ROOT), "command": f"python -m trainer.train {' '.join(BASE)} run.dir=DIR", "runs": runs,
               "median": med, "min": best, "imports_top_level_s": imports, "import_trainer_train_s": import_train_s,
               "goal_s": GOAL_S, "goal_met": med["defaults (W&B offline, CSV)"]["first_step_s"] <= GOAL_S}
    print(f"\n{describe(info)}")
    print(markdown_table(["configuration", "command -> end of step 1 (s): median", "min", "command -> exit (s): median", "min",
                          "CPU-s: median"],
                         [[n, f"{m['first_step_s']:.2f}", f"{best[n]['first_step_s']:.2f}", f"{m['exit_s']:.2f}",
                           f"{best[n]['exit_s']:.2f}", f"{m['cpu_s']:.2f}"] for n, m in med.items()]))
    if args.baseline_tree:
        summary["vs_baseline"] = {}
        for name in CONFIGS:
            if name in med and f"{name}, baseline tree ({base})" in med:
                ours, theirs = med[name], med[f"{name}, baseline tree ({base})"]
                summary["vs_baseline"][name] = {k: ours[k] / theirs[k] for k in keys}
                print(f"{name}: this tree / baseline tree (medians): "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in summary["vs_baseline"][name].items()))
    print(f"\n`import trainer.train` alone: {import_train_s:.2f} s (a fresh interpreter, median of 3)")
    print("imports of the command by package (self time of all its modules, python -X importtime, defaults):")
    print(markdown_table(["package", "seconds"], [[n, f"{s:.2f}"] for n, s in imports]))
    print(f"goal: first step within {GOAL_S:.0f} s (median): {'met' if summary['goal_met'] else 'MISSED'}; the fastest "
          f"run (the least disturbed by other load): {best['defaults (W&B offline, CSV)']['first_step_s']:.2f} s")
    write_json(args.json, summary)
    if args.plot:
        _plot(summary, args.plot)


def _commit(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, secs = zip(*[r for r in summary["imports_top_level_s"] if not r[0].startswith("(")][:8])
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.barh(range(len(names)), secs, color="#6a8fd0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("import time by package (s)")
    first = summary["median"]["defaults (W&B offline, CSV)"]["first_step_s"]
    m = summary["machine"]
    ax.set_title(f"start-up: first step at {first:.1f} s, median (goal {summary['goal_s']:.0f} s); imports\n"
                 f"{m['cpu']} ({m['cpu_cores']} cores), {m['date']}, load avg {m.get('load_avg_1m')}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
