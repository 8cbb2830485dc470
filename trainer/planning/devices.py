"""Device memory and the bandwidth between devices, by device (names as trainer/observability/peaks.py
knows them), for the plan when the device is not the one this process sees."""
from __future__ import annotations

import re
from typing import Optional

from trainer.observability.peaks import device_key

# GB of device memory per table key (datasheets); A100 and V100 come in two sizes: the name says which.
MEMORY_GB: dict[str, float] = {
    "H100 SXM": 80, "H100 PCIe": 80, "H100 NVL": 94, "H200 SXM": 141, "H200 NVL": 141, "A100": 80,
    "L40S": 48, "L40": 48, "L4": 24, "A10G": 24, "A10": 24, "V100 SXM2": 32, "V100 PCIe": 32, "T4": 16,
}
# Effective collective bandwidth per device inside a node, GB/s (NVLink bus bandwidth as NCCL's all-reduce
# reaches it; PCIe parts: the PCIe link).
INTRANODE_GBPS: dict[str, float] = {
    "H100 SXM": 360, "H200 SXM": 360, "H100 NVL": 300, "H200 NVL": 300, "A100": 230, "V100 SXM2": 130,
}
PCIE_DEFAULT_GBPS = 20.0


def memory_gb(device_name: str) -> Optional[float]:
    """Device memory of a named device: the size written in the name ("A100-SXM4-40GB") or the table's."""
    m = re.search(r"(\d+)\s*GB", device_name, re.I)
    if m:
        return float(m.group(1))
    key = device_key(device_name)
    return MEMORY_GB.get(key) if key else None


def intranode_gbps(device_name: Optional[str]) -> float:
    key = device_key(device_name) if device_name else None
    return INTRANODE_GBPS.get(key, PCIE_DEFAULT_GBPS) if key else PCIE_DEFAULT_GBPS
