"""Export a run's newest valid checkpoint as safetensors + a JSON config.

    python -m trainer.export run.dir=PATH [checkpoint=PATH/checkpoints/step-XXXXXXXX]

Writes PATH/export/model.safetensors and PATH/export/config.json. Sharded (ZeRO, FSDP)
checkpoints are consolidated into one full state dict first.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.errors import UserError, exit_on_user_error


def export(run_dir: Path, checkpoint: Path | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from trainer.checkpoint import store
    from trainer.checkpoint.weights import build_net, load_model_state, newest_checkpoint
    from trainer.files import atomic_write_json
    from trainer.tracking.run_dir import RunDir

    if checkpoint is not None:
        try:
            manifest = store.verify(checkpoint)
        except store.CheckpointDamaged as e:
            raise UserError(str(e)) from None
        info = store.CheckpointInfo(checkpoint, int(manifest["step"]), manifest)
    else:
        info = newest_checkpoint(run_dir)
    state = load_model_state(info)
    net = build_net(run_dir)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{info.path} does not match the model in {RunDir(run_dir).model_spec}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = RunDir(run_dir).export
    out.mkdir(exist_ok=True)
    # Tied weights share storage; safetensors stores each tensor once, so clone per name.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if empty:
        raise UserError(f"consolidation produced empty tensors: {empty[:5]}")
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"step": str(info.step), "source": str(info.path)})
    tmp.replace(out / "model.safetensors")
    spec = json.loads(RunDir(run_dir).model_spec.read_text())
    atomic_write_json(out / "config.json", {"model": spec, "step": info.step, "dtype": str(next(iter(tensors.values())).dtype),
                                            "num_params": sum(v.numel() for v in tensors.values())})
    return out / "model.safetensors"


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, parse_kv

    with exit_on_user_error():
        args = parse_kv(sys.argv[1:] if argv is None else argv, {"run.dir": existing_run_dir, "checkpoint": Path}, ("run.dir",))
        path = export(args["run.dir"], args.get("checkpoint"))
        print(f"exported {path}")


if __name__ == "__main__":
    main()
