"""The CPU image (scripts/container.sh, podman): build times, size, and time to the first training step in a
container against the same command on the host.

    python benchmarks/container.py [--repeats 3] [--skip-cold] [--json docs/benchmarks/container_cpu.json]

Root and podman needed (scripts/ci_system_deps.sh). What runs:
- base: `scripts/container.sh base` as it runs once a day: mmdebstrap (minbase + python3, python3-venv,
  ca-certificates), then `podman import`, into a throwaway tag;
- cold build: the image from a copy of this source tree with `--no-cache` (every layer; pip's cache mount as
  earlier builds left it), on the day's base;
- warm builds, with the layer cache: nothing changed; and one file of trainer/ edited (only the source
  layers rebuild);
- image size as podman reports it (base included), and the base alone;
- first step: `python -m trainer.train trainer.max_steps=1 checkpoint.every_n_steps=1` (the default
  experiment, token shards already cached, as on every run after the first; benchmarks/startup.py's clock:
  the step-1 checkpoint's manifest time less its save time) on the host's venv and through
  `scripts/container.sh podman run` (a new container each time, its runs dir and cache mounted), alternating,
  --repeats each; the ratio container/host is the figure that carries across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, describe, machine, markdown_table, write_json  # noqa: E402
from benchmarks.startup import BASE  # noqa: E402

CONTAINER_SH = str(ROOT / "scripts" / "container.sh")
IMAGE = "localhost/trainer:bench"
USER = 4242


def sh(*args: str, env: dict | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if r.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def timed(*args: str, env: dict | None = None) -> float:
    t0 = time.time()
    sh(*args, env=env)
    return round(time.time() - t0, 1)


def image_mb(tag: str) -> float:
    out = sh("bash", CONTAINER_SH, "podman", "image", "inspect", "--format", "{{.Size}}", tag).stdout
    return round(int(out.strip()) / 1e6, 1)


def source_copy(dest: Path) -> Path:
    files = sh("git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard").stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def builds(work: Path, skip_cold: bool) -> dict:
    out: dict = {}
    throwaway = "localhost/trainer-base:bench"
    subprocess.run(["bash", CONTAINER_SH, "podman", "rmi", "--force", throwaway], capture_output=True)
    t0 = time.time()
    base = sh("bash", CONTAINER_SH, "base", env={"BASE_TAG": throwaway}).stdout.strip()
    out["base_s"] = round(time.time() - t0, 1)
    out["base_mb"] = image_mb(base)
    sh("bash", CONTAINER_SH, "podman", "rmi", base)
    context = source_copy(work / "src")
    env = {"IMAGE": IMAGE, "BUILD_CONTEXT": str(context)}
    if not skip_cold:
        out["cold_build_s"] = timed("bash", CONTAINER_SH, "image", env={**env, "BUILD_FLAGS": "--no-cache"})
    # After a --no-cache build, the first build with the layer cache is timed on its own: once (2026-12-04 00:22)
    # it rebuilt every layer (109 s, 0.92x cold), in the next run it took 4.6 s; the cause was not found.
    out["first_build_after_no_cache_s"] = timed("bash", CONTAINER_SH, "image", env=env)
    out["warm_build_unchanged_s"] = timed("bash", CONTAINER_SH, "image", env=env)
    with open(context / "trainer" / "__init__.py", "a") as f:
        f.write("\n# edited by benchmarks/container.py\n")
    out["warm_build_code_edit_s"] = timed("bash", CONTAINER_SH, "image", env=env)
    out["image_mb"] = image_mb(IMAGE)
    return out


def first_step_host(runs: Path, cache: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=runs))
    t0 = time.time()
    sh(sys.executable, "-m", "trainer.train", *BASE, f"run.dir={run_dir}", f"paths.cache_dir={cache}",
       env={"PYTHONPATH": str(ROOT)})
    return step_end(run_dir) - t0


def first_step_container(runs: Path, cache: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=runs))
    os.chown(run_dir, USER, USER)
    t0 = time.time()
    sh("bash", CONTAINER_SH, "podman", "run", "--rm", "--user", f"{USER}:{USER}", "-v", f"{run_dir}:/workspace/run",
       "-v", f"{cache}:/opt/trainer/cache", IMAGE, *BASE, "run.dir=/workspace/run")
    return step_end(run_dir) - t0


def step_end(run_dir: Path) -> float:
    manifest = next((run_dir / "checkpoints").glob("*/manifest.json"))
    save_s = json.loads((run_dir / "manifest.json").read_text())["summary"]["checkpoint_save_s"][0]
    return manifest.stat().st_mtime - save_s


def first_steps(work: Path, repeats: int) -> dict:
    runs, host_cache, ctr_cache = work / "runs", work / "host-cache", work / "ctr-cache"
    for d in (runs, host_cache, ctr_cache):
        d.mkdir()
    os.chown(ctr_cache, USER, USER)
    first_step_host(runs, host_cache)  # builds each side's token shards once (their stdlibs differ)
    first_step_container(runs, ctr_cache)
    host, ctr = [], []
    for _ in range(repeats):
        host.append(round(first_step_host(runs, host_cache), 2))
        ctr.append(round(first_step_container(runs, ctr_cache), 2))
    return {"host_s": host, "container_s": ctr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        b = builds(work, args.skip_cold)
        steps = first_steps(work, args.repeats)
    host, ctr = statistics.median(steps["host_s"]), statistics.median(steps["container_s"])
    print(f"# the CPU image (podman); {describe(info)}")
    rows = [["base: mmdebstrap + podman import", b["base_s"], "", f"{b['base_mb']:.0f} MB"]]
    if "cold_build_s" in b:
        rows.append(["image, cold (--no-cache)", b["cold_build_s"], "1.00", f"{b['image_mb']:.0f} MB"])
    for key, label in (("first_build_after_no_cache_s", "image, first build with the layer cache after --no-cache"),
                       ("warm_build_unchanged_s", "image, warm, nothing changed"),
                       ("warm_build_code_edit_s", "image, warm, trainer/ edited")):
        ratio = f"{b[key] / b['cold_build_s']:.2f}" if "cold_build_s" in b else ""
        rows.append([label, b[key], ratio, ""])
    print(markdown_table(["build", "wall time (s)", "x cold", "size"], rows))
    print()
    print(markdown_table(["first training step (median)", "wall time (s)", "x host", "runs"],
                         [["host (.venv)", f"{host:.1f}", "1.00", steps["host_s"]],
                          ["container (podman run, new container)", f"{ctr:.1f}", f"{ctr / host:.2f}",
                           steps["container_s"]]]))
    # The commit labels the figures: the image's size and build time follow its dependency set.
    commit = sh("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
    dirty = bool(sh("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no").stdout.strip())
    write_json(args.json, {"machine": info, "commit": commit, "dirty": dirty, "image": IMAGE, "builds": b, "first_step": steps,
                           "first_step_command": "python -m trainer.train " + " ".join(BASE)})


if __name__ == "__main__":
    main()
