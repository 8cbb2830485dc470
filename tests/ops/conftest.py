"""Fixtures for the kernel tests: the extension is built (or found in the cache) once per session."""
from __future__ import annotations

import pytest

from trainer import ops


@pytest.fixture(scope="session")
def kernels_loaded() -> dict:
    """Build/load trainer_kernels (C++ CPU paths here; CUDA too where available). Fails, not skips:
    the CPU build is part of what CI checks."""
    ops.set_kernel_mode("fused")
    status = ops.kernel_status()
    ops.set_kernel_mode("reference")
    return status


@pytest.fixture
def fused_mode(kernels_loaded):
    """kernels=fused for the test, reference again afterwards."""
    ops.set_kernel_mode("fused")
    yield
    ops.set_kernel_mode("reference")
