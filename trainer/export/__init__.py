"""Export a run's newest valid checkpoint: our safetensors layout, or a Hugging Face Llama directory.

    python -m trainer.export run.dir=PATH [format=safetensors|hf] [checkpoint=PATH/checkpoints/step-XXXXXXXX]
                             [out=DIR] [wandb=true|false]

format=safetensors (default): PATH/export/model.safetensors (our parameter names) and
PATH/export/config.json (the model spec). format=hf: PATH/export/hf/, a directory
`transformers.AutoModelForCausalLM.from_pretrained` loads as a LlamaForCausalLM (config.json,
model.safetensors, tokenizer files, generation_config.json, a README.md model card and
trainer_export.json, the provenance the lifecycle reads). Sharded (ZeRO, FSDP) checkpoints are
consolidated first. The same weights always give the same bytes: no paths or times in the
safetensors metadata. With W&B on for the run, the export is logged as the artifact
`model-<W&B run id>` (aliases latest, best) of the same W&B run (offline: uploaded by `wandb sync`).

Python: `export(run_dir, format="hf") -> Path` (the model file, or the HF directory).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from trainer.errors import UserError, closest
from trainer.files import atomic_write_json, fsync_path
from trainer.tracking.run_dir import RunDir

FORMATS = ("safetensors", "hf")
HF_SUBDIR = "hf"


def export(run_dir: Path, checkpoint: Path | None = None, format: str = "safetensors", out: Path | None = None,
           wandb: bool = True) -> Path:
    """Export and return the written path: `model.safetensors` (format=safetensors) or the HF directory."""
    from trainer.checkpoint.weights import load_trained_net

    if format not in FORMATS:
        raise UserError(f"format={format!r} is not one of {', '.join(FORMATS)}.{closest(format, FORMATS)}")
    run_dir = Path(run_dir)
    net, info = load_trained_net(run_dir, checkpoint)  # every check that can fail comes before any write
    if format == "hf":
        from trainer.export.hf import check_exportable, write_hf

        check_exportable(net)
        target = Path(out) if out else RunDir(run_dir).export / HF_SUBDIR
        written = _atomic_dir(target, lambda tmp: write_hf(net, info, run_dir, tmp))
        if wandb:
            from trainer.tracking.artifacts import log_export_artifact

            log_export_artifact(run_dir, written, step=info.step)
        return written
    target = Path(out) if out else RunDir(run_dir).export
    return write_plain(net, info, run_dir, target)


def write_plain(net, info, run_dir: Path, out: Path) -> Path:
    """Our own layout: model.safetensors under our parameter names, config.json with the model spec."""
    from safetensors.torch import save_file

    tensors = state_tensors(net)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})  # no step, path or time: same weights, same bytes
    fsync_path(tmp)
    tmp.replace(out / "model.safetensors")
    spec = json.loads(RunDir(run_dir).model_spec.read_text())
    config = {"model": spec, "step": info.step, "dtype": str(next(iter(tensors.values())).dtype),
              "num_params": sum(v.numel() for v in tensors.values())}
    atomic_write_json(out / "config.json", config)
    return out / "model.safetensors"


def state_tensors(net) -> dict:
    """The net's tensors as fresh contiguous CPU copies (safetensors stores each tied tensor once per name)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if empty:
        raise UserError(f"consolidation produced empty tensors: {empty[:5]}")
    return tensors


def _atomic_dir(target: Path, fill) -> Path:
    """Fill a fresh temporary directory next to `target`, then swap it into place (the old one goes last)."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        for p in (*tmp.iterdir(), tmp):  # mkdtemp (and safetensors) make them private; an export is for others
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
            fsync_path(p)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
