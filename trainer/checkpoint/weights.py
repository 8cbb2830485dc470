"""Model weights out of a checkpoint directory, whatever strategy wrote it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.checkpoint import store
from trainer.errors import UserError
from trainer.tracking.run_dir import RunDir


def load_model_state(ckpt: store.CheckpointInfo) -> dict[str, torch.Tensor]:
    """The net's state dict (keys as in the plain nn.Module), loaded with weights_only=True."""
    state_path = ckpt.state_path
    if state_path.is_dir():
        from trainer.checkpoint.consolidate import consolidate_sharded

        state = consolidate_sharded(state_path, ckpt.manifest)
    else:
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)["state_dict"]
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
            raise UserError(f"{state_path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    return strip_prefix(state, "net.")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("_forward_module.").removeprefix("module.")
        if k.startswith("_compiled."):
            continue  # torch.compile's wrapper shares the net's parameters
        out[k.removeprefix(prefix)] = v
    return out


def build_net(run_dir: Path):
    """Rebuild the plain nn.Module from <run_dir>/model.json (target + resolved kwargs)."""
    from hydra.utils import instantiate

    path = RunDir(run_dir).model_spec
    if not path.is_file():
        raise UserError(f"{path} not found: is {run_dir} a run dir that started training?")
    return instantiate(json.loads(path.read_text()))


def newest_checkpoint(run_dir: Path) -> store.CheckpointInfo:
    root = RunDir(run_dir).checkpoints
    info, skipped = store.find_latest_valid(root)
    for msg in skipped:
        print(f"skipping damaged checkpoint: {msg}")
    if info is None:
        raise UserError(f"no valid checkpoint under {root}: the run has not saved one yet. Train it first "
                        f"(python -m trainer.train run.dir={run_dir}), or pass checkpoint=PATH")
    return info


def checkpoint_at(path: Path) -> store.CheckpointInfo:
    """The checkpoint in directory `path`, verified (a damaged one is a UserError naming what is wrong)."""
    try:
        manifest = store.verify(path)
    except store.CheckpointDamaged as e:
        raise UserError(str(e)) from None
    return store.CheckpointInfo(path, int(manifest["step"]), manifest)


def load_trained_net(run_dir: Path, checkpoint: Path | None = None):
    """(net with the checkpoint's weights, in eval mode; its CheckpointInfo). Newest valid checkpoint by default."""
    info = checkpoint_at(checkpoint) if checkpoint is not None else newest_checkpoint(run_dir)
    state = load_model_state(info)
    net = build_net(run_dir)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{info.path} does not match the model in {RunDir(run_dir).model_spec}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval(), info
