"""Which files of a sharded checkpoint belong to which rank, so a lost shard is named.

DeepSpeed (tag `checkpoint`): every rank writes `zero_pp_rank_<r>_mp_rank_00_optim_states.pt`;
with ZeRO-3 also `zero_pp_rank_<r>_mp_rank_00_model_states.pt` (stages 1-2 keep the full
weights once, in `mp_rank_00_model_states.pt`). FSDP and FSDP2 (torch.distributed.checkpoint):
every rank writes `__<r>_0.distcp`, plus `.metadata`; FSDP2 (Lightning's ModelParallelStrategy) also
`meta.pt`, the loops', schedulers' and callbacks' state.
"""
from __future__ import annotations

import re
from pathlib import Path

DCP_META = "meta.pt"  # next to a DCP directory's shards: Lightning's non-tensor state (loops, schedulers, callbacks)
_DS_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt$")
_DCP_RANK = re.compile(r"__(\d+)_\d+\.distcp$")


class MissingShards(Exception):
    """Some rank's shard files are not in a sharded checkpoint."""


def rank_of(rel_path: str) -> int | None:
    name = rel_path.rsplit("/", 1)[-1]
    m = _DS_RANK.match(name) or _DCP_RANK.match(name)
    return int(m.group(1)) if m else None


def shard_list(ckpt_dir: Path, state: str, strategy: str, world_size: int, zero_stage: int | None) -> list[dict]:
    """[{"rank": r, "file": path relative to ckpt_dir}, ...] for a sharded state directory.

    Raises MissingShards when a rank in [0, world_size) wrote nothing, or a file the format
    always has (DeepSpeed's full-weights file at stages 1-2, DCP's .metadata) is missing.
    """
    root = ckpt_dir / state
    files = sorted(str(p.relative_to(ckpt_dir)) for p in root.rglob("*") if p.is_file())
    shards = [{"rank": r, "file": f} for f in files if (r := rank_of(f)) is not None]
    kinds = ["optim_states"] + (["model_states"] if strategy == "deepspeed" and zero_stage == 3 else [])
    problems = []
    for r in range(world_size):
        mine = [s["file"] for s in shards if s["rank"] == r]
        if strategy == "deepspeed":
            problems += [f"rank {r}'s {k} file" for k in kinds if not any(k in f for f in mine)]
        elif not mine:
            problems.append(f"rank {r}'s shard")
    common = {"deepspeed": ["mp_rank_00_model_states.pt"] if zero_stage in (1, 2) else [], "fsdp": [".metadata"],
              "fsdp2": [".metadata", DCP_META]}.get(strategy, [])
    for name in common:
        found = [f for f in files if f.endswith("/" + name) and rank_of(f) is None]
        if not found:
            problems.append(name)
        shards += [{"rank": None, "file": f} for f in found]
    if problems:
        raise MissingShards(f"{root}: missing {', '.join(problems)} (world size {world_size})")
    return shards
