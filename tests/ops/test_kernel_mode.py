"""kernels=auto|fused|reference: what runs where, the clear errors, the build cache and lock."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer import ops
from trainer.errors import UserError
from trainer.models.gpt import GPT, GPTConfig
from trainer.ops import auto, build

ROOT = Path(__file__).resolve().parents[2]


class OpRecorder(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops_used_by_a_training_step(fused_loss: bool) -> set[str]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2, fused_loss=fused_loss))
    idx = torch.randint(0, 32, (2, 8))
    with OpRecorder() as rec:
        model(idx, idx).backward()
    return {n.split(".")[1] for n in rec.names if n.startswith("trainer_kernels.")}


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="kernels='fast' is not a kernel mode"):
        ops.set_kernel_mode("fast")


def test_reference_mode_never_touches_the_extension(kernels_loaded):
    assert ops.set_kernel_mode("reference") == "reference"
    assert _ops_used_by_a_training_step(fused_loss=True) == set()


def test_fused_mode_routes_cpu_tensors_to_the_cpp_paths(fused_mode):
    assert ops.kernel_mode() == "fused"
    assert _ops_used_by_a_training_step(fused_loss=False) == {
        "rms_norm_fwd", "rms_norm_bwd", "rotary", "swiglu_fwd", "swiglu_bwd", "cross_entropy_fwd", "cross_entropy_bwd",
    }
    assert "fused_linear_cross_entropy_fwd" in _ops_used_by_a_training_step(fused_loss=True)
    status = ops.kernel_status()
    assert status["fused_devices"] == ["cpu", "cuda"] and status["extension"]["path"].endswith(".so")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour of auto")
def test_auto_on_cpu_uses_the_reference_and_says_why(kernels_loaded):
    assert ops.set_kernel_mode("auto") == "reference"
    assert "no CUDA device" in ops.kernel_status()["reason"]
    assert _ops_used_by_a_training_step(fused_loss=False) == set()


def test_auto_with_a_failing_cuda_build_falls_back_and_warns_once(monkeypatch, caplog):
    """A GPU machine whose toolchain cannot build (CUDA is the boundary faked here), on a GPU where
    the auto table picks a kernel (auto builds only then)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    entry = {"device": {"name": "NVIDIA H200", "capability": "9.0"}, "sources": auto.source_hashes(),
             "ops": {"swiglu": {"eager": {"fwd": 2.0, "fwd_bwd": 2.0}}}}
    monkeypatch.setattr(auto, "load_table", lambda path=None: {"entries": [entry]})
    monkeypatch.setattr(ops, "_WARNED", False)

    def failing_load(with_cuda, cache_dir=None):
        assert with_cuda
        raise build.KernelBuildError("nvcc 12.4 does not match CUDA 13.0 that torch was built with")

    monkeypatch.setattr(build, "load", failing_load)
    with caplog.at_level("WARNING", logger="trainer.ops"):
        assert ops.set_kernel_mode("auto") == "reference"
        assert ops.set_kernel_mode("auto") == "reference"
    warnings = [r for r in caplog.records if "continuing on the PyTorch reference path" in r.getMessage()]
    assert len(warnings) == 1 and "nvcc 12.4 does not match" in warnings[0].getMessage()
    assert "nvcc 12.4" in ops.kernel_status()["reason"]
    with pytest.raises(UserError, match="kernels=fused, but the custom kernels cannot be built.*nvcc 12.4"):
        ops.set_kernel_mode("fused")
    ops.set_kernel_mode("reference")


def _python(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter that has no prebuilt kernels to find."""
    empty = Path(env["TRAINER_CACHE"]) / "no-prebuilt"
    empty.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAINER_KERNELS_DIR": str(empty), **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_fused_without_a_compiler_is_one_clear_user_error(tmp_path):
    code = (
        "from trainer import ops\n"
        "from trainer.errors import UserError\n"
        "try:\n    ops.set_kernel_mode('fused')\n"
        "except UserError as e:\n    print('USER_ERROR', e)\n"
    )
    r = _python(code, {"TRAINER_CACHE": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert "USER_ERROR kernels=fused, but the custom kernels cannot be built" in r.stdout, r.stderr
    assert "no C++ compiler: '/nonexistent/c++' not found" in r.stdout
    assert "kernels=auto" in r.stdout  # the message names the way out


def test_fused_without_the_kernel_sources_says_a_non_editable_install_lacks_them(tmp_path):
    """A wheel or `pip install .` has no csrc/ (it is not package data): kernels=fused says so and names the
    editable install; kernels=auto on CPU never needs the sources and runs on the reference."""
    code = (
        "from pathlib import Path\n"
        "from trainer import ops\n"
        "from trainer.errors import UserError\n"
        "from trainer.ops import build\n"
        f"build.CSRC = Path({str(tmp_path / 'site-packages' / 'csrc')!r})\n"
        "print('AUTO', ops.set_kernel_mode('auto'))\n"
        "try:\n    ops.set_kernel_mode('fused')\n"
        "except UserError as e:\n    print('USER_ERROR', e)\n"
    )
    r = _python(code, {"TRAINER_CACHE": str(tmp_path)})
    assert "AUTO reference" in r.stdout, r.stderr
    assert "USER_ERROR kernels=fused, but the custom kernels cannot be built" in r.stdout, r.stderr
    assert f"the kernel sources (csrc/) are not at {tmp_path / 'site-packages' / 'csrc'}" in r.stdout
    assert "non-editable install" in r.stdout and "pip install -e ." in r.stdout and "kernels=auto" in r.stdout


def test_a_held_build_lock_times_out_with_a_message(tmp_path):
    from filelock import FileLock

    identity = build._identity(False, "")
    lock_path = tmp_path / "kernels" / f"{build._key(identity)}.lock"
    lock_path.parent.mkdir(parents=True)
    code = (
        "from trainer.ops import build\n"
        "try:\n    build.load(False, lock_timeout_s=1)\n"
        "except build.KernelBuildError as e:\n    print('BUILD_ERROR', e)\n"
    )
    with FileLock(str(lock_path)):
        r = _python(code, {"TRAINER_CACHE": str(tmp_path)})
    assert "BUILD_ERROR waited 1s for the kernel build lock" in r.stdout, r.stderr
    assert str(lock_path) in r.stdout


def test_a_prebuilt_directory_is_used_only_when_it_matches(kernels_loaded, tmp_path, monkeypatch):
    built = Path(kernels_loaded["extension"]["path"]).parent
    if kernels_loaded["extension"]["with_cuda"]:
        pytest.skip("checks the CPU-only prebuilt lookup")
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    shutil.copy(built / build.META_FILE, prebuilt / build.META_FILE)
    shutil.copy(built / "trainer_kernels.so", prebuilt / "trainer_kernels.so")
    monkeypatch.setenv("TRAINER_KERNELS_DIR", str(prebuilt))
    assert build._matching_prebuilt(with_cuda=False) == prebuilt
    # `python -m trainer.ops.build --reuse` (scripts/gpu_check.sh's second call) keeps it, without compiling
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although --out held a matching build")

    monkeypatch.setattr(build, "compile_extension", no_compile)
    assert build.main(["--cpu-only", "--reuse", "--out", str(prebuilt)]) == 0
    meta = json.loads((prebuilt / build.META_FILE).read_text())
    meta["sources"] = "0" * 64  # built from other sources: must not be loaded
    (prebuilt / build.META_FILE).write_text(json.dumps(meta))
    assert build._matching_prebuilt(with_cuda=False) != prebuilt
    with pytest.raises(AssertionError, match="compiled although"):  # stale: --reuse builds again
        build.main(["--cpu-only", "--reuse", "--out", str(prebuilt)])


def test_arch_coverage():
    assert build._covers("8.0;9.0", (9, 0))
    assert build._covers("9.0+PTX", (9, 0))
    assert not build._covers("8.0", (9, 0))


def test_python_knows_the_cuda_rms_norm_width_limit():
    """fused.rms_norm sends wider rows to the reference; its limit must be the kernel's."""
    import re

    from trainer.ops import fused

    src = (build.CSRC / "rms_norm" / "rms_norm_cuda.cu").read_text()
    threads = int(re.search(r"kBwdThreads = (\d+);", src).group(1))
    accumulators = int(re.search(r"kMaxAccFloats = (\d+);", src).group(1))
    assert fused.RMS_NORM_CUDA_MAX_COLS == threads * accumulators
