"""Build and load the `trainer_kernels` extension compiled from csrc/.

Lookup order, first hit wins:
1. a prebuilt copy (`python -m trainer.ops.build`, run by the Dockerfile) in
   $TRAINER_KERNELS_DIR (default trainer/ops/_prebuilt/), if it was built from these
   sources for this torch and covers this GPU;
2. the node-local JIT cache ${TRAINER_CACHE:-~/.cache/trainer}/kernels/<key>, where <key>
   hashes the sources, torch, CUDA, Python and the GPU architectures;
3. a fresh ninja build into that cache directory.

Builds are serialised by a file lock (flock: released by the kernel if the holder dies, so a
crashed builder never blocks the next one) with a timeout, so concurrent ranks build once.
Everything that can go wrong before compiling (no compiler, no ninja, nvcc not matching the
CUDA torch was built with) is detected up front and reported as one KernelBuildError.

`python -m trainer.ops.build [--out DIR] [--cpu-only] [--reuse] [--verbose]` builds ahead of time;
TORCH_CUDA_ARCH_LIST picks the architectures (default: the visible GPU's).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainer.files import atomic_write_json

EXTENSION = "trainer_kernels"
CSRC = Path(__file__).resolve().parents[2] / "csrc"
PREBUILT_DIR = Path(__file__).resolve().parent / "_prebuilt"
META_FILE = "build.json"
DEFAULT_LOCK_TIMEOUT_S = 1800.0


class KernelBuildError(RuntimeError):
    """The extension cannot be built or loaded here; the message says why."""


@dataclass(frozen=True)
class BuildInfo:
    path: str  # the loaded shared library
    with_cuda: bool
    archs: str  # TORCH_CUDA_ARCH_LIST it was built for ("" without CUDA)
    origin: str  # "prebuilt" | "cache" | "built"
    seconds: float  # build time, 0 when loaded from disk

    def as_dict(self) -> dict:
        return asdict(self)


_LOADED: BuildInfo | None = None
_FAILED: dict[bool, KernelBuildError] = {}  # with_cuda -> the error: a failed build is not retried in-process


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    base = cache_dir or os.environ.get("TRAINER_CACHE") or "~/.cache/trainer"
    return Path(base).expanduser() / "kernels"


def sources(with_cuda: bool) -> list[Path]:
    """The C++ sources always; the .cu files only for a CUDA build."""
    _check_sources()
    found = sorted(CSRC.rglob("*.cpp"))
    if with_cuda:
        found += sorted(CSRC.rglob("*.cu"))
    return found


def _check_sources() -> None:
    # csrc/ sits next to trainer/ in a checkout and is not package data: a wheel or a non-editable
    # `pip install .` has no kernel sources, only a prebuilt library (the container's) can serve there.
    if not CSRC.is_dir():
        raise KernelBuildError(
            f"the kernel sources (csrc/) are not at {CSRC}: a non-editable install (a wheel, `pip install .`, a "
            "git URL) does not ship them; for the fused kernels install from a checkout with `pip install -e .`")


def source_hash(with_cuda: bool) -> str:
    """Hash of the sources a build compiles (a CPU build ignores the .cu/.cuh files)."""
    suffixes = {".cpp", ".h", ".cu", ".cuh"} if with_cuda else {".cpp", ".h"}
    h = hashlib.sha256()
    for path in sorted(p for p in CSRC.rglob("*") if p.is_file() and p.suffix in suffixes):
        h.update(str(path.relative_to(CSRC)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _identity(with_cuda: bool, archs: str) -> dict:
    """Everything a built library depends on; equal identities mean the library can be reused."""
    return {
        "sources": source_hash(with_cuda),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda if with_cuda else None,
        "python": sys.implementation.cache_tag,
        "with_cuda": with_cuda,
        "archs": archs,
    }


def _key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def device_archs() -> str:
    """TORCH_CUDA_ARCH_LIST if set, else the capabilities of the visible GPUs ("9.0;8.0")."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"].strip()
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def _covers(archs: str, capability: tuple[int, int]) -> bool:
    """Whether a build for `archs` ("8.0;9.0+PTX") runs natively on a GPU of `capability`."""
    wanted = f"{capability[0]}.{capability[1]}"
    return any(a.replace("+PTX", "").strip() == wanted for a in re.split(r"[;\s]+", archs) if a)


def _nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def toolchain_problem(with_cuda: bool) -> str | None:
    """Why a build cannot work here, or None. Checked before compiling anything."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} not found on PATH (install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja not found (pip install ninja)"
    if not with_cuda:
        return None
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if cpp_extension.CUDA_HOME is None:
        return "nvcc not found: set CUDA_HOME to the CUDA toolkit matching torch's CUDA " + torch.version.cuda
    nvcc = str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc")
    version = _nvcc_version(nvcc)
    if version is None:
        return f"cannot run {nvcc} --version"
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (
            f"nvcc {version} ({nvcc}) does not match CUDA {torch.version.cuda} that torch was built with; "
            f"point CUDA_HOME at a CUDA {torch.version.cuda.split('.')[0]}.x toolkit"
        )
    return None


def compile_extension(out_dir: Path, with_cuda: bool, archs: str, verbose: bool = False) -> Path:
    """Compile csrc/ into out_dir with ninja and load it into this process; returns the .so."""
    from torch.utils import cpp_extension

    problem = toolchain_problem(with_cuda)
    if problem:
        raise KernelBuildError(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    # torch's own build baton; a builder killed mid-build leaves it behind and every later
    # build would wait on it forever. We hold our own lock, so nobody else is building here.
    (out_dir / "lock").unlink(missing_ok=True)
    defines = ["-DTRAINER_WITH_CUDA"] if with_cuda else []
    previous_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    try:
        cpp_extension.load(
            name=EXTENSION,
            sources=[str(s) for s in sources(with_cuda)],
            extra_cflags=["-O3", *defines],
            extra_cuda_cflags=["-O3", "-lineinfo", *defines],
            build_directory=str(out_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        raise KernelBuildError(f"compiling the kernels in {out_dir} failed: {_last_lines(str(e))}") from e
    finally:
        if with_cuda:
            if previous_archs is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = previous_archs
    return out_dir / f"{EXTENSION}.so"


def _last_lines(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _read_meta(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if (directory / meta.get("library", "")).is_file() else None


def _write_meta(directory: Path, identity: dict, library: Path, seconds: float) -> None:
    meta = {**identity, "library": library.name, "build_seconds": round(seconds, 1)}
    atomic_write_json(directory / META_FILE, meta)  # readers never see a half-written file


def _matching_prebuilt(with_cuda: bool, directory: Path | None = None) -> Path | None:
    """A prebuilt directory (default $TRAINER_KERNELS_DIR, else trainer/ops/_prebuilt) built from
    these sources for this torch that runs on this GPU."""
    directory = Path(directory or os.environ.get("TRAINER_KERNELS_DIR") or PREBUILT_DIR)
    meta = _read_meta(directory)
    if meta is None:
        return None
    same = _identity(with_cuda, meta.get("archs", ""))
    if any(meta.get(k) != v for k, v in same.items()):
        return None
    gpus = range(torch.cuda.device_count()) if with_cuda else []
    if not all(_covers(meta["archs"], torch.cuda.get_device_capability(i)) for i in gpus):
        return None
    return directory


def _load_library(path: Path) -> None:
    try:
        torch.ops.load_library(str(path))
    except OSError as e:
        raise KernelBuildError(f"cannot load {path}: {e}") from e


def load(
    with_cuda: bool,
    cache_dir: str | os.PathLike | None = None,
    lock_timeout_s: float | None = None,
    verbose: bool = False,
) -> BuildInfo:
    """Load the extension into this process (building it if needed); idempotent."""
    if _LOADED is not None:
        if with_cuda and not _LOADED.with_cuda:
            raise KernelBuildError("the kernels were already loaded without CUDA in this process")
        return _LOADED
    if with_cuda in _FAILED:
        raise _FAILED[with_cuda]
    try:
        return _load(with_cuda, cache_dir, lock_timeout_s, verbose)
    except KernelBuildError as e:
        _FAILED[with_cuda] = e
        raise


def _load(with_cuda: bool, cache_dir, lock_timeout_s: float | None, verbose: bool) -> BuildInfo:
    global _LOADED
    from filelock import FileLock, Timeout

    prebuilt = _matching_prebuilt(with_cuda)
    if prebuilt is not None:
        meta = _read_meta(prebuilt)
        _load_library(prebuilt / meta["library"])
        _LOADED = BuildInfo(str(prebuilt / meta["library"]), with_cuda, meta["archs"], "prebuilt", 0.0)
        return _LOADED

    _check_sources()  # before the toolchain checks: without sources nothing else matters
    archs = device_archs() if with_cuda else ""
    identity = _identity(with_cuda, archs)
    directory = cache_root(cache_dir) / _key(identity)
    if lock_timeout_s is None:
        lock_timeout_s = float(os.environ.get("TRAINER_KERNELS_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.parent / f"{directory.name}.lock"
    try:
        with FileLock(str(lock_path), timeout=lock_timeout_s):
            meta = _read_meta(directory)
            if meta is not None:  # built earlier, or by another rank while we waited
                _load_library(directory / meta["library"])
                _LOADED = BuildInfo(str(directory / meta["library"]), with_cuda, archs, "cache", 0.0)
                return _LOADED
            start = time.monotonic()
            library = compile_extension(directory, with_cuda, archs, verbose=verbose)
            seconds = time.monotonic() - start
            _write_meta(directory, identity, library, seconds)
            _LOADED = BuildInfo(str(library), with_cuda, archs, "built", seconds)
            return _LOADED
    except Timeout as e:
        raise KernelBuildError(
            f"waited {lock_timeout_s:.0f}s for the kernel build lock {lock_path}: another process is still "
            "building (the lock frees itself if that process dies); raise TRAINER_KERNELS_LOCK_TIMEOUT or "
            "use kernels=reference"
        ) from e


def loaded() -> BuildInfo | None:
    return _LOADED


def build_ahead_of_time(out_dir: Path, with_cuda: bool, verbose: bool = False) -> Path:
    """Build into out_dir with the metadata the loader looks for; returns the library."""
    archs = device_archs() if with_cuda else ""
    if with_cuda and not archs:
        raise KernelBuildError("no GPU visible and TORCH_CUDA_ARCH_LIST unset: name the architectures to build for")
    start = time.monotonic()
    library = compile_extension(out_dir, with_cuda, archs, verbose=verbose)
    _write_meta(out_dir, _identity(with_cuda, archs), library, time.monotonic() - start)
    return library


def main(argv: list[str] | None = None) -> int:
    from trainer.errors import UserError, exit_on_user_error

    parser = argparse.ArgumentParser(description="Build the trainer_kernels extension ahead of time.")
    parser.add_argument("--out", type=Path, default=PREBUILT_DIR, help=f"output directory (default {PREBUILT_DIR})")
    parser.add_argument("--cpu-only", action="store_true", help="build only the C++ CPU paths")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what --out holds if it was built from these sources for this torch and GPU")
    args = parser.parse_args(argv)
    with_cuda = not args.cpu_only and torch.version.cuda is not None
    if args.reuse and _matching_prebuilt(with_cuda, args.out) is not None:
        print(f"reused {args.out}: built from these sources for this torch (cuda={with_cuda})")
        return 0
    with exit_on_user_error():
        try:
            library = build_ahead_of_time(args.out, with_cuda, verbose=args.verbose)
        except KernelBuildError as e:
            raise UserError(f"cannot build the kernels: {e}") from e
        meta = _read_meta(args.out) or {}
        print(f"built {library} (cuda={with_cuda}, archs={meta.get('archs') or '-'}, {meta.get('build_seconds')}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
