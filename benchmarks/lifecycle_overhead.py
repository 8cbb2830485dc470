"""What each lifecycle step costs next to the default training run.

    python benchmarks/lifecycle_overhead.py [--max-steps 400] [--work DIR] [--out docs/benchmarks/lifecycle_overhead.json]

Runs, as a user would (one process each, `python -m ...`, defaults unless noted), in one
fresh runs dir and one data cache whose token shards are built before timing starts:
  train         python -m trainer.train data.quality.enabled=false   (the baseline: the default run without
                its data check; --max-steps shortens it, and every training below, on a loaded machine)
  data_check    python -m trainer.data_check                           (cold: what the default run's automatic
                check costs the first time for a corpus; then cached: what it costs every later run)
  evaluate      python -m trainer.evaluate run.dir=RUN                 (the whole validation split)
  export        python -m trainer.export run.dir=RUN format=hf
  promote       python -m trainer.promote run.dir=RUN model=bench promote.max_loss=10   (first version)
  drift         python -m trainer.drift reference=RUN current=stdlib
  reproduce     python -m trainer.reproduce run.dir=RUN
  pipeline      python -m trainer.pipeline promote.max_loss=10 trainer.progress_bar=false   (then again: all skipped)
For each: wall seconds and CPU seconds (user+sys of the process and its children), and both as
a ratio to the baseline train measured in the same invocation. CPU time is the steadier figure
on a shared machine. The full pipeline's output is saved next to the JSON (.pipeline.txt).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(name: str, args: list[str], env: dict, rows: list, ok_codes=(0,)) -> subprocess.CompletedProcess:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in ok_codes:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows.append({"step": name, "command": "python -m " + " ".join(args), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                 "exit_code": proc.returncode})
    print(f"{name:14s} wall {wall:7.1f}s  cpu {cpu:7.1f}s   python -m {' '.join(args)}", flush=True)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=400, help="training steps (the default run: 400)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default="docs/benchmarks/lifecycle_overhead.json")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="lifecycle-bench-"))
    runs, cache = work / "runs", work / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "TRAINER_RUNS_DIR": str(runs),
           "TRAINER_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    sys.path.insert(0, str(ROOT))
    os.environ["TRAINER_CACHE"] = str(cache)
    from hydra.utils import instantiate

    from trainer.config import compose_config

    instantiate(compose_config([]).data).prepare_data()  # token shards built once, outside the timings
    load_at_start, started = os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows: list[dict] = []
    base = runs / "base"
    steps = f"trainer.max_steps={a.max_steps}"
    timed("train", ["trainer.train", f"run.dir={base}", "data.quality.enabled=false", "trainer.progress_bar=false", steps],
          env, rows)
    shutil.rmtree(cache / "data" / "quality", ignore_errors=True)
    timed("data_check", ["trainer.data_check", f"out={work / 'dc'}"], env, rows)
    rows[-1]["check_seconds_inside"] = json.loads((work / "dc" / "report.json").read_text())["seconds"]
    timed("data_check (cached)", ["trainer.data_check", f"out={work / 'dc'}"], env, rows)
    timed("evaluate", ["trainer.evaluate", f"run.dir={base}"], env, rows)
    timed("export", ["trainer.export", f"run.dir={base}", "format=hf"], env, rows)
    timed("promote", ["trainer.promote", f"run.dir={base}", "model=bench", "promote.max_loss=10"], env, rows)
    timed("drift", ["trainer.drift", f"reference={base}", "current=stdlib", f"out={work / 'drift'}"], env, rows)
    timed("reproduce", ["trainer.reproduce", f"run.dir={base}", f"out.dir={runs / 'repro'}"], env, rows)
    pipeline = ["trainer.pipeline", "promote.max_loss=10", "trainer.progress_bar=false", steps, f"paths.runs_dir={runs / 'pipe'}"]
    pipe = timed("pipeline", pipeline, env, rows)
    again = timed("pipeline again", pipeline, env, rows)
    t0 = rows[0]
    for r in rows:
        r["wall_ratio_to_train"] = round(r["wall_s"] / t0["wall_s"], 3)
        r["cpu_ratio_to_train"] = round(r["cpu_s"] / t0["cpu_s"], 3)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    out.write_text(json.dumps({"benchmark": "lifecycle_overhead", "started": started, "machine": _machine(),
                               "max_steps": a.max_steps, "cpu_count": os.cpu_count(), "loadavg_at_start": load_at_start,
                               "loadavg_at_end": load, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".pipeline.txt").write_text(pipe.stdout + "\n--- the same command again ---\n" + again.stdout)
    print(f"wrote {out} (load average at the end: {load})")


def _machine() -> str:
    """The CPU model (figures on a shared machine are read with its load)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
