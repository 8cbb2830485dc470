"""Install size and time: the core against every extra, each into a fresh venv, from the pinned set.

    python benchmarks/install.py [--json docs/benchmarks/install.json]

Each configuration gets a new venv and exactly what a user runs: `pip install -c
requirements/constraints.txt torch` (the build pip resolves here: TORCH_BUILD=default) and then
`pip install -c requirements/constraints.txt ".[EXTRAS]"` from this source tree, not editable. Wall time
of both steps together and the venv's size on disk (du) are reported, with the ratio against the
core measured in the same run. Indexes, wheel directories and pip's cache are as this machine has them:
where wheels come from local directories the time is mostly unpacking and byte-compiling, not downloading.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, describe, machine, markdown_table, write_json  # noqa: E402

CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def all_extras() -> str:
    return ",".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def install(extras: str, workdir: Path) -> dict:
    venv = workdir / f"venv-{extras or 'core'}"
    shutil.rmtree(venv, ignore_errors=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS)]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "torch"], check=True, capture_output=True)
    subprocess.run([*pip, f"{ROOT}[{extras}]" if extras else str(ROOT)], check=True, capture_output=True)
    seconds = time.time() - t0
    site = next((venv / "lib").glob("python*/site-packages"))
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    return {"seconds": round(seconds, 1), "venv_mb": round(du_mb(venv), 1),
            "torch_mb": round(du_mb(site / "torch"), 1), "packages": len(frozen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    info = machine()
    configs = {"core": "", "all extras": all_extras()}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extras in configs.items():
            results[name] = {"extras": extras, **install(extras, Path(tmp))}
            shutil.rmtree(Path(tmp) / f"venv-{extras or 'core'}")
    core = results["core"]
    rows = [[name, f"{r['seconds']:.0f}", f"{r['seconds'] / core['seconds']:.2f}", f"{r['venv_mb']:.0f}",
             f"{r['venv_mb'] / core['venv_mb']:.2f}", f"{r['torch_mb']:.0f}", str(r["packages"]),
             f"`.[{r['extras']}]`" if r["extras"] else "`.`"] for name, r in results.items()]
    print(f"# install, fresh venv, pinned set; {describe(info)}")
    print(markdown_table(["configuration", "wall time (s)", "x core", "venv (MB)", "x core", "of it torch (MB)",
                          "packages", "installed"], rows))
    if args.json:
        write_json(args.json, {"machine": info, "torch_build": "default (what pip resolved here)", "results": results})


if __name__ == "__main__":
    main()
