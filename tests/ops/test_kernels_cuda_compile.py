"""The CUDA side compiles here without a GPU: every .cu for sm_80 and sm_90a with no register
spills (parsed from `-Xptxas -v`), and the bindings' CUDA branches (TRAINER_WITH_CUDA)."""
from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trainer.ops.build import CSRC

NVCC = shutil.which("nvcc")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NVCC is None, reason="needs nvcc")]

CU_FILES = sorted(CSRC.rglob("*.cu"))
# The macros torch.utils.cpp_extension passes to nvcc: the kernels must not rely on the
# implicit half/bfloat16 operators they switch off.
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
]
ARCHS = {"sm_80": "arch=compute_80,code=sm_80", "sm_90a": "arch=compute_90a,code=sm_90a"}
_FUNCTION = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(report: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(kernel, arch): (spill store bytes, spill load bytes)} from `-Xptxas -v` output."""
    result, current = {}, None
    for line in report.splitlines():
        if m := _FUNCTION.search(line):
            current = (m.group(1), m.group(2))
        elif current and (m := _SPILLS.search(line)):
            result[current] = (int(m.group(1)), int(m.group(2)))
            current = None
    return result


def _nvcc(cu: Path, out_dir: Path) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-c", "-std=c++17", "-O3", "-lineinfo", "-Xptxas", "-v", *TORCH_NVCC_FLAGS]
    for gencode in ARCHS.values():
        cmd += ["-gencode", gencode]
    cmd += [str(cu), "-o", str(out_dir / (cu.stem + ".o"))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("nvcc")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda cu: _nvcc(cu, out), CU_FILES))
    return {cu.name: r for cu, r in zip(CU_FILES, results)}


def test_every_op_has_a_cuda_source():
    assert {p.parent.name for p in CU_FILES} == {"rms_norm", "rotary", "swiglu", "cross_entropy"}


@pytest.mark.parametrize("name", [p.name for p in CU_FILES])
def test_cu_compiles_for_sm80_and_sm90a_without_spills(ptxas_reports, name):
    r = ptxas_reports[name]
    assert r.returncode == 0, r.stderr[-4000:]
    kernels = parse_ptxas(r.stderr)
    for arch in ARCHS:
        assert any(a == arch for _, a in kernels), f"no kernels compiled for {arch}"
    spilling = {k: v for k, v in kernels.items() if v != (0, 0)}
    assert not spilling, f"register spills (store, load bytes): {spilling}"


def test_ptxas_parser_reads_spills():
    report = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    16 bytes stack frame, 16 bytes spill stores, 40 bytes spill loads\n"
    )
    assert parse_ptxas(report) == {("_Z1kv", "sm_80"): (16, 40)}


def _cuda_include() -> Path:
    from torch.utils.cpp_extension import CUDA_HOME

    for root in [CUDA_HOME, Path(NVCC).resolve().parents[1], "/usr/local/cuda"]:
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    pytest.skip("CUDA headers not found next to nvcc")


def test_bindings_compile_with_their_cuda_branches(tmp_path):
    """g++ -fsyntax-only over the bindings with TRAINER_WITH_CUDA against torch's headers."""
    from torch.utils.cpp_extension import include_paths

    # The CPU wheel lacks this one generated header of c10/cuda; it only defines export macros.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cuda_include = _cuda_include()
    flags = ["-std=c++20", "-fsyntax-only", "-DTRAINER_WITH_CUDA", f"-I{cuda_include}", f"-I{tmp_path}"]
    flags += [f"-I{p}" for p in include_paths()]
    bindings = [CSRC / op / f"{op}.cpp" for op in ("rms_norm", "rotary", "swiglu", "cross_entropy")]

    def check(src: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["c++", *flags, str(src)], capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(check, bindings))
    for src, r in zip(bindings, results):
        assert r.returncode == 0, f"{src.name}:\n{r.stderr[-4000:]}"
