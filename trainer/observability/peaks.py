"""Dense peak FLOP/s per device and dtype, for MFU.

Values are NVIDIA datasheet figures WITHOUT structured sparsity (the datasheets print the
sparse number with an asterisk; dense is half of it). MFU against a sparse peak would read
2x too low. Unknown devices get no number: MFU is then reported as unknown with a hint to set
`observability.peak_tflops`, never guessed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# TFLOP/s, dense. Keys: bf16, fp16, tf32, fp32 (fp32 = CUDA cores, no tensor cores).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},  # 40 GB and 80 GB, SXM and PCIe
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L40": {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    # NVIDIA publishes no A10G sheet; AWS's A10G is the A10 part (same tensor-core peaks).
    "A10G": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100 SXM2": {"fp16": 125.0, "fp32": 15.7},
    "V100 PCIe": {"fp16": 112.0, "fp32": 14.0},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}

# Device names as CUDA/NVML report them -> table key. Order matters: specific before generic.
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"h100.*nvl", "H100 NVL"),
    (r"h100.*pcie", "H100 PCIe"),
    (r"h100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"h200.*nvl", "H200 NVL"),
    (r"h200", "H200 SXM"),
    (r"a100", "A100"),
    (r"l40s", "L40S"),
    (r"l40\b", "L40"),
    (r"\bl4\b", "L4"),
    (r"a10g", "A10G"),
    (r"\ba10\b", "A10"),
    (r"v100.*pcie", "V100 PCIe"),
    (r"v100", "V100 SXM2"),
    (r"\bt4\b", "T4"),
]


def device_key(device_name: str) -> Optional[str]:
    """Table key for a device name such as 'NVIDIA H100 80GB HBM3', or None when unknown."""
    name = device_name.lower()
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name):
            return key
    return None


@dataclass(frozen=True)
class Peak:
    tflops: Optional[float]  # None: unknown, MFU not computed
    source: str  # where the number came from, or why there is none

    @property
    def flops(self) -> Optional[float]:
        return None if self.tflops is None else self.tflops * 1e12


def peak_for(device_name: str, dtype: str, override_tflops: Optional[float] = None) -> Peak:
    """Dense peak of one device for a compute dtype ('bf16' | 'fp16' | 'tf32' | 'fp32')."""
    if override_tflops is not None:
        return Peak(float(override_tflops), "observability.peak_tflops")
    key = device_key(device_name)
    if key is None:
        return Peak(None, f"no peak FLOP/s known for device '{device_name}'; set observability.peak_tflops to get MFU")
    tflops = PEAK_TFLOPS[key].get(dtype)
    if tflops is None:
        return Peak(None, f"no {dtype} peak known for {key}; set observability.peak_tflops to get MFU")
    return Peak(tflops, f"{key} dense {dtype} (datasheet)")


def compute_dtype(precision: str, tf32_enabled: bool = False) -> str:
    """The matmul dtype a Lightning precision string computes in."""
    p = str(precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16") or p.startswith("fp16"):
        return "fp16"
    return "tf32" if tf32_enabled else "fp32"


def tf32_matmuls_enabled() -> bool:
    import torch

    return torch.get_float32_matmul_precision() != "highest" or bool(torch.backends.cuda.matmul.allow_tf32)
