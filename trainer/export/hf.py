"""Write a trained GPT as a Hugging Face Llama directory (see trainer/models/llama_hf.py for the mapping)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from trainer.errors import UserError
from trainer.files import atomic_write_json, atomic_write_text

PROVENANCE = "trainer_export.json"  # what the lifecycle and the model card read back


def write_hf(net, info, run_dir: Path, out: Path) -> Path:
    """Fill `out` (an empty directory) with config.json, model.safetensors, tokenizer files,
    generation_config.json, trainer_export.json and README.md. Returns `out`."""
    from safetensors.torch import save_file

    from trainer.export import hf_tokenizer
    from trainer.export.card import model_card
    from trainer.models.llama_hf import hf_config, to_hf_state

    cfg = check_exportable(net)
    hf_tokenizer.save_run_tokenizer(run_dir, out)
    tok = hf_tokenizer.load_dir(out)  # the tokenizer as it ships
    vocab = cfg.vocab_size  # the true vocabulary; the embedding's padding rows stay behind
    if len(tok) > vocab:
        raise UserError(f"the run's tokenizer has {len(tok)} tokens but the model only {vocab} embedding rows")
    tensors = to_hf_state(net.state_dict(), cfg)
    dtype = str(tensors["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})  # no path or time: same weights, same bytes
    bos, eos = tok.bos_token_id, tok.eos_token_id
    atomic_write_json(out / "config.json", hf_config(cfg, bos_token_id=bos, eos_token_id=eos, dtype=dtype))
    # Sampling defaults as `python -m trainer.generate` has them.
    atomic_write_json(out / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "do_sample": True,
                                                 "temperature": 0.8, "top_k": 50})
    provenance = provenance_of(run_dir, info, tok, cfg)
    atomic_write_json(out / PROVENANCE, provenance)
    atomic_write_text(out / "README.md", model_card(run_dir, provenance, cfg))
    return out


def check_exportable(net):
    """The GPT's config, or a UserError for a model that has no Llama form."""
    from trainer.models.gpt import GPTConfig

    cfg = getattr(net, "cfg", None)
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"format=hf exports the GPT (trainer.models.gpt.GPT); this run's model is {type(net).__name__}. "
                        "Use format=safetensors.")
    return cfg


def provenance_of(run_dir: Path, info, tok, cfg) -> dict:
    from trainer.checkpoint import store
    from trainer.export import hf_tokenizer
    from trainer.tracking.run_dir import RunDir

    wandb_id = RunDir(run_dir).wandb_id
    manifest_bytes = (info.path / store.MANIFEST).read_bytes()
    return {
        "format": "hf-llama",
        "run_id": info.manifest.get("run_id") or run_dir.name,
        "wandb_run_id": wandb_id.read_text().strip() if wandb_id.is_file() else None,
        "step": info.step,
        "checkpoint": info.path.name,
        "checkpoint_manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "data_fingerprint": info.manifest.get("data_fingerprint"),
        "global_batch": info.manifest.get("global_batch"),
        "tokens_seen": info.step * info.manifest["global_batch"] * cfg.seq_len if info.manifest.get("global_batch") else None,
        "tokenizer": hf_tokenizer.vocab_identity(tok),
        "vocab_size": cfg.vocab_size,
        "padded_vocab_size": cfg.padded_vocab_size,
        "init_from": cfg.init_from,
    }
