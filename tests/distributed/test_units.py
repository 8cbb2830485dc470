"""The pure parts of the distributed layer: rank agreement, NCCL defaults, shard lists, resume plans, DeepSpeed JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainer.checkpoint import store
from trainer.checkpoint.reshard import plan_resume
from trainer.checkpoint.shards import MissingShards, shard_list
from trainer.distributed.agreement import config_hash, disagreements
from trainer.distributed.env import cpu_threads_per_rank
from trainer.distributed.nccl import set_nccl_defaults
from trainer.config import StrategyConfig
from trainer.distributed.deepspeed import deepspeed_json
from trainer.errors import UserError


def test_disagreements_name_the_field_and_the_ranks():
    same = {"config": "a", "code": "c", "packages": {"torch": "2.13"}}
    assert disagreements([same, dict(same), dict(same)]) == []
    other_cfg = {**same, "config": "b"}
    other_pkg = {**same, "packages": {"torch": "2.12"}}
    lines = disagreements([same, other_cfg, dict(same), other_pkg])
    assert any("resolved config differs" in line and "[1]" in line for line in lines), lines
    assert any("torch: rank 0 has 2.13, rank 3 has 2.12" in line for line in lines), lines
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 1, "b": 3})


def test_nccl_flight_recorder_defaults_keep_user_settings(tmp_path):
    env = {"TORCH_NCCL_TRACE_BUFFER_SIZE": "50"}
    added = set_nccl_defaults(tmp_path / "logs", env)
    assert env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "50" and "TORCH_NCCL_TRACE_BUFFER_SIZE" not in added
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"].startswith(str(tmp_path / "logs"))


def _touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def test_shard_list_and_verify_name_a_lost_shard(tmp_path):
    ckpt = tmp_path / "step-00000004"
    tag = "state/checkpoint/"
    _touch(ckpt, *(tag + f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")))
    shards = shard_list(ckpt, "state", "deepspeed", 2, 3)
    assert sorted((s["rank"], s["file"].rsplit("_", 2)[-2]) for s in shards) == [(0, "model"), (0, "optim"), (1, "model"), (1, "optim")]
    with pytest.raises(MissingShards, match="rank 2's optim_states"):
        shard_list(ckpt, "state", "deepspeed", 3, 3)
    with pytest.raises(MissingShards, match="mp_rank_00_model_states.pt"):
        shard_list(ckpt, "state", "deepspeed", 2, 1)  # stages 1-2 keep the full weights in one file
    store.write_manifest(ckpt, step=4, state="state", checksum="size",
                         meta={"strategy": "deepspeed", "world_size": 2, "zero_stage": 3, "shards": shards})
    assert store.verify(ckpt)["world_size"] == 2
    (ckpt / tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(store.CheckpointDamaged, match=r"missing shard .*zero_pp_rank_1_mp_rank_00_optim_states.pt.*rank 1 of 2"):
        store.verify(ckpt)


def _info(tmp_path, state: str, **meta) -> store.CheckpointInfo:
    path = tmp_path / "step-00000004"
    (path / state).mkdir(parents=True, exist_ok=True) if state == "state" else None
    return store.CheckpointInfo(path, 4, {"state": state, "global_batch": 8, **meta})


def test_resume_plans(tmp_path):
    full = _info(tmp_path, "state.ckpt", strategy="ddp", world_size=2)
    assert plan_resume(full, strategy="single", zero_stage=None, world_size=1, global_batch=8).state_path == full.state_path
    assert not plan_resume(full, strategy="fsdp", zero_stage=None, world_size=4, global_batch=8).load_universal
    with pytest.raises(UserError, match="DeepSpeed can only resume DeepSpeed checkpoints"):
        plan_resume(full, strategy="deepspeed", zero_stage=2, world_size=2, global_batch=8)
    zero = _info(tmp_path, "state", strategy="deepspeed", world_size=2, zero_stage=3)
    assert plan_resume(zero, strategy="deepspeed", zero_stage=3, world_size=2, global_batch=8).state_path == zero.state_path
    with pytest.raises(UserError, match="python -m trainer.export"):
        plan_resume(zero, strategy="ddp", zero_stage=None, world_size=2, global_batch=8)
    with pytest.raises(UserError, match="Resume on 2 ranks"):
        plan_resume(zero, strategy="deepspeed", zero_stage=3, world_size=1, global_batch=8)
    fsdp = _info(tmp_path, "state", strategy="fsdp", world_size=2)
    with pytest.raises(UserError, match="strategy.fsdp_state_dict=full"):
        plan_resume(fsdp, strategy="fsdp", zero_stage=None, world_size=1, global_batch=8)


def test_deepspeed_json_from_typed_fields_with_raw_overrides():
    s = StrategyConfig(name="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True, overlap_comm=False,
                       contiguous_gradients=True, reduce_bucket_size=10, allgather_bucket_size=20,
                       stage3_prefetch_bucket_size=30, stage3_param_persistence_threshold=40,
                       deepspeed_config={"zero_optimization": {"reduce_bucket_size": 99}, "steps_per_print": 7})
    ds = deepspeed_json(s, micro_batch_size=4, accumulate=2, gradient_clip=1.0, precision="bf16-mixed")
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["reduce_bucket_size"] == 99 and z["allgather_bucket_size"] == 20
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["steps_per_print"] == 7
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    json.dumps(ds)  # what is saved in the run dir


def test_cpu_threads_per_rank_is_omp_num_threads_else_this_processes_cpus_split_between_local_ranks():
    cpus = len(os.sched_getaffinity(0))
    assert cpu_threads_per_rank(2, {"OMP_NUM_THREADS": "3"}) == 3  # per process, as torchrun reads it
    assert cpu_threads_per_rank(1, {}) == cpus
    assert cpu_threads_per_rank(2, {}) == max(1, cpus // 2)
    assert cpu_threads_per_rank(4 * cpus, {}) == 1
    for unusable in ("0", "", "4,2", "many"):  # not a thread count: ignored, not an error
        assert cpu_threads_per_rank(2, {"OMP_NUM_THREADS": unusable}) == max(1, cpus // 2), unusable
