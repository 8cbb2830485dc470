"""kernels=auto: which implementation each op gets, from kernel speeds measured on real GPUs.

The table (trainer/ops/auto_table.json) holds, per GPU model, the speed of each fused op relative
to its PyTorch reference, eager and under torch.compile, forward and forward+backward, as
benchmarks/kernels.py measured them in one process run, with where and how (card, capability,
driver, torch, date, the raw JSON). auto gives an op its fused kernel on a GPU only where that
measurement says the kernel is faster than the reference in the same compile setting, by at least
MIN_SPEEDUP in every pass it was measured in; everything else, and every GPU or CPU without a
measurement, gets the reference. So auto is never knowingly slower than the reference.

A table entry applies to the GPU it was measured on (matched by name), or else to a GPU of the
same compute capability (the status says so: the speeds were not measured on that card).

    python -m trainer.ops.auto show                      # the table and what auto picks from it
    python -m trainer.ops.auto add auto_table_candidate.json --source docs/gpu/<run>_kernels_bench.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.ops import OPS  # the ops trainer.ops dispatches

TABLE = Path(__file__).resolve().parent / "auto_table.json"
CSRC = Path(__file__).resolve().parents[2] / "csrc"

# The benchmark's name for each op.
BENCH_NAMES = {
    "rms_norm": "rms_norm",
    "rope": "apply_rotary",
    "swiglu": "swiglu",
    "cross_entropy": "cross_entropy",
    "fused_linear_ce": "fused_linear_cross_entropy",
}
# The csrc/ folder holding each op's kernels: a measurement holds for the sources it was taken on.
SOURCE_DIRS = {
    "rms_norm": "rms_norm",
    "apply_rotary": "rotary",
    "swiglu": "swiglu",
    "cross_entropy": "cross_entropy",
    "fused_linear_cross_entropy": "cross_entropy",
}
# The fused kernel must beat the reference by this factor: a kernel within measurement noise
# (a few per cent between runs) of the reference is not worth a custom op in the graph.
MIN_SPEEDUP = 1.02


@dataclass(frozen=True)
class Choice:
    impl: str  # "fused" | "reference"
    why: str


def source_hashes() -> dict[str, str]:
    """Per op, a hash of the sources its kernels are built from (its csrc/ folder and csrc/common)."""
    out = {}
    for op, folder in SOURCE_DIRS.items():
        h = hashlib.sha256()
        for path in sorted([*(CSRC / "common").glob("*"), *(CSRC / folder).glob("*")]):
            if path.is_file() and path.suffix in (".cpp", ".h", ".cu", ".cuh"):
                h.update(str(path.relative_to(CSRC)).encode())
                h.update(path.read_bytes())
        out[op] = h.hexdigest()[:16]
    return out


def load_table(path: Path | None = None) -> dict:
    path = path or TABLE
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {"entries": []}
    if not isinstance(table.get("entries"), list):
        raise ValueError(f"{path}: expected an object with an 'entries' list")
    return table


def find_entry(table: dict, name: str, capability: str) -> tuple[dict | None, str]:
    """The entry measured on this GPU (by name), else one of the same capability; and how it matched."""
    entries = table.get("entries", [])
    for e in entries:
        if e["device"]["name"] == name:
            return e, "name"
    for e in entries:
        if e["device"].get("capability") == capability:
            return e, "capability"
    return None, "none"


def _passes(speedups: dict) -> dict[str, float]:
    """The measured passes of one op and setting: {"fwd": x, "fwd_bwd": y}, missing ones left out."""
    return {k: v for k, v in speedups.items() if k in ("fwd", "fwd_bwd") and isinstance(v, (int, float))}


def choose(entry: dict | None, match: str, compiled: bool, device: str,
           sources: dict[str, str] | None = None) -> dict[str, Choice]:
    """auto's pick for every op on one CUDA device under the given compile setting.

    sources: the current source_hashes(); an op whose kernels changed since the measurement gets
    the reference until it is measured again."""
    sources = source_hashes() if sources is None else sources
    setting = "compile" if compiled else "eager"
    if entry is None:
        why = f"no kernel measurement for {device} in {TABLE.name}: the reference"
        return {op: Choice("reference", why) for op in OPS}
    where = entry["device"]["name"]
    if match == "capability":
        where += f" (same capability {entry['device']['capability']}; not measured on {device})"
    prov = entry.get("provenance", {})
    source = f"{where}, torch {prov.get('torch', '?')}, {prov.get('date', '?')}"
    out = {}
    measured_sources = entry.get("sources", {})
    for op in OPS:
        passes = _passes(entry.get("ops", {}).get(op, {}).get(setting, {}))
        if measured_sources.get(op) != sources.get(op):
            out[op] = Choice("reference", f"its kernels changed since they were measured on {source}: "
                                          "run benchmarks/kernels.py on a GPU to measure them again")
            continue
        if not passes:
            out[op] = Choice("reference", f"not measured against the {setting} reference on {source}")
            continue
        figures = ", ".join(f"{k.replace('_', '+')} x{v:.2f}" for k, v in passes.items())
        if min(passes.values()) >= MIN_SPEEDUP:
            out[op] = Choice("fused", f"{figures} vs the {setting} reference on {source}")
        else:
            out[op] = Choice("reference", f"the kernel is not faster: {figures} vs the {setting} reference on {source} "
                                          f"(needs >= x{MIN_SPEEDUP} in every pass)")
    return out


# ---- building entries from benchmark reports ---------------------------------------------------


def entry_from_report(report: dict, provenance: dict) -> dict:
    """A table entry from benchmarks/kernels.py's JSON: per op and setting, the reference's time over
    the fused kernel's (above 1: the kernel is faster), the worst over the op's shapes.

    A forward that already computes the gradients (the fused linear cross-entropy) is compared
    forward+backward only: its forward alone is not the same work as the reference's."""
    ops: dict[str, dict] = {}
    for row in report.get("results", []):
        op = BENCH_NAMES.get(row.get("op"))
        if op is None or row.get("error"):
            continue
        for setting in ("eager", "compile"):
            for pass_, key in (("fwd", "fwd_ms"), ("fwd_bwd", "fwd_bwd_ms")):
                if pass_ == "fwd" and row.get("grads_in_forward"):
                    continue
                times = row.get(key, {})
                if not times.get("fused") or not times.get(setting):
                    continue
                ratio = times[setting] / times["fused"]
                slot = ops.setdefault(op, {}).setdefault(setting, {})
                slot[pass_] = round(min(ratio, slot.get(pass_, ratio)), 3)
                slot.setdefault("shapes", [])
                if row["shape"] not in slot["shapes"]:
                    slot["shapes"].append(row["shape"])
    return {"device": {"name": provenance["device"], "capability": provenance["capability"]},
            "provenance": {k: v for k, v in provenance.items() if k not in ("device", "capability", "sources")},
            "sources": provenance.get("sources") or source_hashes(),
            "ops": ops}


def add_entry(entry: dict, path: Path | None = None) -> dict:
    """Put entry into the table at path, replacing the one measured on the same GPU model."""
    path = path or TABLE
    table = load_table(path)
    entries = [e for e in table["entries"] if e["device"]["name"] != entry["device"]["name"]]
    table = {**table, "entries": [*entries, entry]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    tmp.replace(path)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The measured table behind kernels=auto.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show", help="print what auto picks on each measured GPU")
    add = sub.add_parser("add", help="add (or replace) a GPU's entry from benchmarks/kernels.py's candidate file")
    add.add_argument("candidate", type=Path)
    add.add_argument("--source", required=True,
                     help="the run's kernels_bench.json as committed in the repository (e.g. docs/gpu/...json)")
    args = parser.parse_args(argv)
    if args.cmd == "add":
        root = TABLE.parents[2]
        if not (root / args.source).is_file():
            parser.error(f"--source {args.source}: no such file under {root}; commit the raw JSON first")
        entry = json.loads(args.candidate.read_text())
        entry["provenance"]["source"] = args.source
        add_entry(entry)
        print(f"{TABLE}: entry for {entry['device']['name']} from {entry['provenance'].get('source')}")
    for entry in load_table()["entries"]:
        for compiled in (False, True):
            picks = choose(entry, "name", compiled, entry["device"]["name"])
            print(f"{entry['device']['name']}, {'torch.compile' if compiled else 'eager'}:")
            for op, c in picks.items():
                print(f"  {op:28s} {c.impl:9s} {c.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
