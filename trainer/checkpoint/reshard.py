"""Resuming a checkpoint on another world size (same global batch): what can load it, and how.

- A full checkpoint (`state.ckpt`: single, ddp, fsdp with full state dicts) loads on any world
  size with single, ddp or fsdp.
- A DeepSpeed ZeRO-1/2 checkpoint is partitioned by data-parallel rank. On another world size (or
  stage 1 <-> 2) it is converted once to DeepSpeed's *universal* checkpoint (per-parameter fp32
  weights and Adam moments, `deepspeed.checkpoint.ds_to_universal`), which DeepSpeed re-partitions
  at load (`checkpoint.load_universal`). The conversion is written next to the checkpoint,
  atomically, under a lock (the first rank converts, the others wait); the original is untouched.

        python -m trainer.checkpoint.reshard RUN_DIR/checkpoints/step-XXXXXXXX   # convert by hand

- An FSDP2 checkpoint (torch.distributed.checkpoint) loads on any world size with strategy=fsdp2:
  DCP reshards parameters and optimizer state to the loading ranks' layout.
- ZeRO-3 on another world size is refused: through a universal checkpoint its loss leaves the
  straight run's (measured 1e-4 at the first resumed step, 2e-3 three steps later).
- Anything else (ZeRO into ddp/fsdp, a full checkpoint into DeepSpeed or FSDP2, FSDP shards on another
  world size, FSDP2 into another strategy) is refused before training with the way out.
"""
from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.checkpoint import store
from trainer.errors import UserError, exit_on_user_error

log = logging.getLogger("trainer")
UNIVERSAL = "universal"  # <ckpt>/universal/{latest_universal, checkpoint/...}
DS_TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy saves under


@dataclass(frozen=True)
class ResumePlan:
    state_path: Path  # what to pass to trainer.fit(ckpt_path=...)
    load_universal: bool = False  # DeepSpeed: load a universal checkpoint (set checkpoint.load_universal)


def plan_resume(info: store.CheckpointInfo, *, strategy: str, zero_stage: int | None, world_size: int,
                global_batch: int) -> ResumePlan:
    m = info.manifest
    saved_strategy, saved_world = m.get("strategy"), m.get("world_size")
    saved_stage, saved_batch = m.get("zero_stage"), m.get("global_batch")
    same_layout = saved_world in (None, world_size) and (saved_strategy, saved_stage) == (strategy, zero_stage if strategy == "deepspeed" else saved_stage)
    if saved_batch is not None and saved_batch != global_batch:
        log.warning("resuming %s (global batch %s) with global batch %s: the samples after resume differ from "
                    "the checkpointed run's", info.path, saved_batch, global_batch)
    convert_cmd = f"python -m trainer.checkpoint.reshard {info.path}"
    if saved_strategy == "deepspeed":
        if strategy != "deepspeed":
            raise UserError(
                f"{info.path} is a DeepSpeed ZeRO-{saved_stage} checkpoint; resume it with a DeepSpeed strategy "
                f"(strategy=deepspeed_zero1/2/3, any world size), or export its weights (python -m trainer.export "
                f"run.dir=RUN_DIR checkpoint={info.path}) to start a new run from them"
            )
        if saved_world == world_size and saved_stage == zero_stage:
            return ResumePlan(info.state_path)
        if 3 in (saved_stage, zero_stage):
            # Measured (tests/distributed, gradient clipping off): through a universal checkpoint ZeRO-3's
            # loss leaves the straight run's by 1e-4 at the first resumed step and 2e-3 three steps later.
            raise UserError(
                f"{info.path} is a ZeRO-{saved_stage} checkpoint of {saved_world} ranks; resuming it on {world_size} "
                f"ranks with ZeRO-{zero_stage} is not supported (DeepSpeed's universal checkpoint does not restore "
                f"ZeRO-3 exactly). Resume on {saved_world} ranks (trainer.devices x trainer.num_nodes), or consolidate "
                f"its weights: python -m trainer.export run.dir=RUN_DIR checkpoint={info.path}"
            )
        log.info("resuming a ZeRO-%s checkpoint of %s ranks on %s ranks (ZeRO-%s) through a universal checkpoint",
                 saved_stage, saved_world, world_size, zero_stage)
        return ResumePlan(ensure_universal(info), load_universal=True)
    if (saved_strategy == "fsdp2") != (strategy == "fsdp2"):
        raise UserError(
            f"{info.path} was written by strategy={saved_strategy}; strategy={strategy} cannot resume it. Resume with "
            f"strategy={saved_strategy}" + (" (any world size: its shards are resharded at load)" if saved_strategy == "fsdp2" else "")
            + f", or export its weights (python -m trainer.export run.dir=RUN_DIR checkpoint={info.path}) to start a new run"
        )
    if strategy == "fsdp2":
        if saved_world != world_size:
            log.info("resuming an FSDP2 checkpoint of %s ranks on %s ranks (resharded by torch.distributed.checkpoint)",
                     saved_world, world_size)
        return ResumePlan(info.state_path)
    if strategy == "deepspeed":
        raise UserError(
            f"{info.path} was written by strategy={saved_strategy}; DeepSpeed can only resume DeepSpeed checkpoints. "
            f"Resume with strategy={saved_strategy} (any world size), or drop run.resume/run.resume_from"
        )
    if info.state_path.is_dir() and not same_layout:  # FSDP sharded state dict
        raise UserError(
            f"{info.path} holds FSDP shards of {saved_world} ranks; resume it with strategy=fsdp on {saved_world} "
            f"ranks (trainer.devices x trainer.num_nodes), or save full state dicts (strategy.fsdp_state_dict=full), "
            "which load on any world size"
        )
    return ResumePlan(info.state_path)


def ensure_universal(info: store.CheckpointInfo) -> Path:
    """The universal form of a DeepSpeed checkpoint, converting it once (locked, atomic, verified)."""
    out = info.path / UNIVERSAL
    lock_path = info.path / f"{UNIVERSAL}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other ranks wait here while the first converts
        try:
            store.verify(out, deep=False)
            return out
        except store.CheckpointDamaged:
            pass
        tmp = info.path / f"{store.TMP_PREFIX}{UNIVERSAL}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
               "--input_folder", str(info.state_path / DS_TAG), "--output_folder", str(tmp / DS_TAG),
               "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not (tmp / "latest_universal").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"converting {info.path} to a universal checkpoint failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        store.write_manifest(tmp, step=info.step, state=".", checksum="size",
                             meta={**{k: v for k, v in info.manifest.items() if k not in ("files", "shards", "state")},
                                   "universal_of": str(info.path)})
        shutil.rmtree(out, ignore_errors=True)  # an unverifiable leftover
        tmp.replace(out)
        return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        if len(args) != 1:
            raise UserError("usage: python -m trainer.checkpoint.reshard RUN_DIR/checkpoints/step-XXXXXXXX")
        path = Path(args[0]).absolute()
        try:
            manifest = store.verify(path)
        except store.CheckpointDamaged as e:
            raise UserError(str(e)) from None
        if manifest.get("strategy") != "deepspeed":
            raise UserError(f"{path} is not a DeepSpeed checkpoint (strategy={manifest.get('strategy')}): "
                            "full checkpoints load on any world size as they are")
        out = ensure_universal(store.CheckpointInfo(path, int(manifest["step"]), manifest))
        print(f"universal checkpoint: {out} (loads on any world size with a DeepSpeed strategy)")


if __name__ == "__main__":
    main()
