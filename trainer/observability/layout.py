"""The files inside a run's perf/ folder: written by the monitor, read by the report.

    rank<k>.jsonl       one "meta" record, then one "step" record per batch, per rank
    sys_<host>.jsonl    NVML + psutil samples, one file per node
    stragglers.jsonl    rank 0's window exchanges (who was slow, by how much)
    verdict.json        the bottleneck verdicts, the final one first
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_RANK = re.compile(r"^rank(\d+)\.jsonl$")


@dataclass(frozen=True)
class PerfFiles:
    dir: Path

    def rank_records(self, rank: int) -> Path:
        return self.dir / f"rank{rank}.jsonl"

    def system_samples(self, host: str) -> Path:
        return self.dir / f"sys_{host}.jsonl"

    @property
    def stragglers(self) -> Path:
        return self.dir / "stragglers.jsonl"

    @property
    def verdict(self) -> Path:
        return self.dir / "verdict.json"

    def all_rank_records(self) -> dict[int, Path]:
        return {int(m.group(1)): p for p in sorted(self.dir.glob("rank*.jsonl")) if (m := _RANK.match(p.name))}

    def all_system_samples(self) -> dict[str, Path]:
        return {p.stem.removeprefix("sys_"): p for p in sorted(self.dir.glob("sys_*.jsonl"))}
