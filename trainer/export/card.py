"""The README.md model card of an HF export: what the model is, what it saw, how it scored, where it came from."""
from __future__ import annotations

import json
from pathlib import Path

def model_card(run_dir: Path, provenance: dict, cfg) -> str:
    from trainer.tracking.run_dir import RunDir, load_frozen

    frozen = load_frozen(RunDir(run_dir).config)
    manifest = _read_json(RunDir(run_dir).manifest)
    data, corpus, git = frozen.get("data") or {}, manifest.get("data") or {}, manifest.get("git") or {}
    n_params = _param_count(cfg, provenance["vocab_size"])
    rows = [
        ("architecture", f"LlamaForCausalLM, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
                         f"MLP {cfg.hidden}, context {cfg.seq_len}, RoPE theta {cfg.rope_theta:g}, "
                         f"tied embeddings: {str(cfg.tie_embeddings).lower()}"),
        ("parameters", f"{n_params:,}"),
        ("data", data_description(data)),
        ("tokenizer", f"{data.get('tokenizer')} (vocabulary {provenance['vocab_size']}, identity `{provenance['tokenizer']}`)"),
        ("data fingerprint", f"`{provenance.get('data_fingerprint')}`"),
        ("training tokens in the corpus", _num(corpus.get("train_tokens"))),
        ("steps", f"{provenance['step']:,}"),
        ("tokens seen", _num(provenance.get("tokens_seen"))),
        ("global batch", _num(provenance.get("global_batch"))),
        ("checkpoint", f"{provenance['checkpoint']}, manifest sha256 `{provenance['checkpoint_manifest_sha256']}`"),
        ("code", f"git `{git.get('sha')}`" + (" (uncommitted changes)" if git.get("dirty") else "")),
        ("run", f"`{provenance['run_id']}`, W&B run `{provenance.get('wandb_run_id')}`"),
    ]
    if provenance.get("init_from"):
        rows.append(("fine-tuned from", f"`{provenance['init_from']}`"))
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [llama, causal-lm, trainer]", "---",
        "", f"# {frozen.run.get('name', 'model')} / {provenance['run_id']}", "",
        "A Llama-architecture causal language model trained with this repository's `trainer` "
        "(`python -m trainer.train`) and exported with `python -m trainer.export format=hf`.", "",
        "## Training", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Evaluation", "", *_eval_table(run_dir, provenance["step"]), "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'ids = tokenizer("def ", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0]))", "```", "",
    ]
    return "\n".join(lines)


def data_description(data) -> str:
    """The corpus as the run named it: its path, or each source of a mixture with its share; a dataset's
    config and split; the text field only where it selects a column (tables and datasets)."""
    from omegaconf import OmegaConf

    from trainer.data.sources import SourceSpec, reads_text_field, source_specs

    data = OmegaConf.to_container(data) if OmegaConf.is_config(data) else dict(data)
    common = {k: data[k] for k in ("name", "split", "text_field", "file_glob", "streaming", "max_tokens") if k in data}
    try:
        if data.get("sources"):
            specs = source_specs(list(data["sources"]), common)
        elif data.get("path") is not None:
            specs = [SourceSpec(path=str(data["path"]), **common)]
        else:
            return "n/a"
    except Exception:  # noqa: BLE001 - another data module's keys: show its path as given
        return f"`{data.get('path')}`"
    total = sum(s.weight for s in specs)
    parts = []
    for s in specs:
        details = ([f"config `{s.name}`"] if s.name else []) + ([f"split `{s.split}`"] if s.split != "train" else [])
        details += [f"text field `{s.text_field}`"] if reads_text_field(s) else []
        details += [f"weight {s.weight / total:.3g}"] if len(specs) > 1 else []
        parts.append(f"`{s.path}`" + (f" ({', '.join(details)})" if details else ""))
    return ("mixture of " if len(specs) > 1 else "") + "; ".join(parts)


def _eval_table(run_dir: Path, step: int) -> list[str]:
    from trainer.tracking.run_dir import RunDir

    results = [_read_json(p) for p in sorted(RunDir(run_dir).eval.glob("*.json"))]
    results = [r for r in results if "loss" in r]
    if not results:
        return ["Not evaluated at export time (`python -m trainer.evaluate run.dir=RUN_DIR`, then export again)."]
    out = ["| name | split | tokens | loss (nats) | perplexity | bits per byte | step |", "|---|---|---|---|---|---|---|"]
    for r in results:
        stale = "" if r.get("checkpoint_step") == step else " (another checkpoint)"
        bpb = f"{r['bits_per_byte']:.4f}" if r.get("bits_per_byte") is not None else "n/a"
        out.append(f"| {r.get('name')} | {r.get('split')} | {r.get('tokens'):,} | {r['loss']:.4f} | "
                   f"{r['perplexity']:.3f} | {bpb} | {r.get('checkpoint_step')}{stale} |")
    return out


def _param_count(cfg, vocab: int) -> int:
    C, H, L = cfg.d_model, cfg.hidden, cfg.n_layers
    per_layer = 4 * C * C + 3 * C * H + 2 * C
    return vocab * C * (1 if cfg.tie_embeddings else 2) + L * per_layer + C


def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "n/a"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
