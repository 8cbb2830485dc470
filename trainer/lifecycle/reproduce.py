"""Reproduce a run: compare the environment with its manifest, re-run its frozen config, compare the results.

1. Environment: git sha and dirty flag, package versions, Python, torch/CUDA, CPU count (thread
   count sets the order of floating-point reductions on CPU) and the data fingerprint, each
   difference named with its recorded and current value.
2. Re-run (trainer/reproduce.py, the entry point): the frozen <run_dir>/config.yaml, with only
   run.dir and run.id changed, into a new run dir, the way `python -m trainer.train` starts a run.
3. Compare: the final weights tensor by tensor (bitwise on CPU; on GPU within `atol`, since
   cuDNN/cuBLAS kernels are not bitwise deterministic), the training summary's losses, and both
   runs evaluated on the same held-out tokens.
4. Verdict: reproduced (bitwise | within tolerance) or not, with the differences that may explain it.
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from trainer.errors import UserError
from trainer.tracking.run_dir import RunDir

REPRODUCED_EXIT, NOT_REPRODUCED_EXIT = 0, 3


def environment_differences(run_dir: Path) -> list[dict[str, Any]]:
    """Every way this environment differs from the one recorded in <run_dir>/manifest.json."""
    from trainer.tracking.manifest import device_info, git_state, package_versions

    manifest = read_manifest(run_dir)
    now_git = git_state(Path(__file__).resolve().parents[2])
    rec_git = manifest.get("git") or {}
    diffs: list[dict[str, Any]] = []

    def differ(what: str, recorded: Any, now: Any) -> None:
        if recorded != now:
            diffs.append({"what": what, "recorded": recorded, "now": now})

    differ("git.sha", rec_git.get("sha"), now_git.get("sha"))
    differ("git.dirty", rec_git.get("dirty"), now_git.get("dirty"))
    now_packages = package_versions()
    for name in sorted(set(manifest.get("packages") or {}) | set(now_packages)):
        differ(f"packages.{name}", (manifest.get("packages") or {}).get(name), now_packages.get(name))
    differ("python", manifest.get("python"), platform.python_version())
    rec_dev, now_dev = manifest.get("device") or {}, device_info()
    for key in ("torch", "cuda", "cuda_available", "gpus", "driver"):
        differ(f"device.{key}", rec_dev.get(key), now_dev.get(key))
    import os

    differ("cpu_count", manifest.get("cpu_count"), os.cpu_count())
    differ("data_fingerprint", manifest.get("data_fingerprint"), current_data_fingerprint(run_dir))
    return diffs


def current_data_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint the run's data config gives today (None when its data module has none)."""
    from hydra.utils import instantiate

    from trainer.tracking.run_dir import load_frozen

    dm = instantiate(load_frozen(RunDir(run_dir).config).data)
    if not hasattr(dm, "prepare_data"):
        return None
    dm.prepare_data()
    return getattr(dm, "fingerprint", None)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = RunDir(Path(run_dir)).manifest
    if not path.is_file():
        raise UserError(f"{run_dir} has no {path.name}: reproduce needs a run dir written by python -m trainer.train")
    return json.loads(path.read_text())


def compare_weights(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """Tensor-by-tensor comparison of the newest valid checkpoints of two runs."""
    import torch

    from trainer.checkpoint.weights import load_model_state, newest_checkpoint

    a_info, b_info = newest_checkpoint(a_dir), newest_checkpoint(b_dir)
    a, b = load_model_state(a_info), load_model_state(b_info)
    out: dict[str, Any] = {"steps": [a_info.step, b_info.step], "tensors": len(a), "missing": sorted(set(a) ^ set(b)),
                           "differing": [], "max_abs_diff": 0.0}
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            out["differing"].append(key)
            out["max_abs_diff"] = math.inf
            continue
        if not torch.equal(x, y):
            out["differing"].append(key)
            out["max_abs_diff"] = max(out["max_abs_diff"], float((x.double() - y.double()).abs().max()))
    out["bitwise"] = not out["differing"] and not out["missing"] and a_info.step == b_info.step
    return out


def summary_losses(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    sa, sb = (read_manifest(d).get("summary") or {} for d in (a_dir, b_dir))
    return {key: [sa.get(key), sb.get(key)] for key in ("final_train_loss", "final_val_loss", "steps")}


def verdict(weights: dict[str, Any], metrics: dict[str, Any], on_gpu: bool, atol: float) -> tuple[bool, str]:
    loss_a, loss_b = metrics["eval"]["loss"]
    if weights["missing"] or weights["steps"][0] != weights["steps"][1]:
        return False, f"NOT REPRODUCED: the runs ended at steps {weights['steps']} with parameter names differing: {weights['missing'][:5]}"
    if weights["bitwise"] and loss_a == loss_b:
        return True, f"REPRODUCED: all {weights['tensors']} weight tensors bitwise identical; eval loss {loss_a:.6f} in both"
    if on_gpu and weights["max_abs_diff"] <= atol:
        return True, (f"REPRODUCED within tolerance (GPU): max |weight difference| {weights['max_abs_diff']:.3g} <= atol={atol}; "
                      f"eval loss {loss_a:.6f} vs {loss_b:.6f}")
    bound = "bitwise on CPU" if not on_gpu else f"atol={atol} on GPU"
    return False, (f"NOT REPRODUCED ({bound}): {len(weights['differing'])} of {weights['tensors']} tensors differ, max |difference| "
                   f"{weights['max_abs_diff']:.3g}; eval loss {loss_a:.6f} vs {loss_b:.6f}")


def on_gpu_run(run_dir: Path) -> bool:
    """The rule trainer.fit applies: accelerator gpu/cuda, or auto with CUDA visible."""
    import torch

    from trainer.tracking.run_dir import load_frozen

    acc = load_frozen(RunDir(run_dir).config).trainer.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


