"""Our GPT <-> Hugging Face Llama: config and weight names, both directions.

The GPT (trainer/models/gpt.py) is a Llama without grouped-query attention: RMSNorm before
attention and MLP, rotary embeddings in the rotate-half convention (trainer/ops/reference.py,
pairs (i, i + hs/2) within each head, exactly as `transformers`' `rotate_half`), a bias-free
SwiGLU MLP and an optional tied embedding. So the weights map one to one, with no permutation of
q/k rows; only our fused qkv projection is split into q_proj/k_proj/v_proj.

    ours                               Hugging Face LlamaForCausalLM
    embed.weight                       model.embed_tokens.weight
    blocks.{i}.attn_norm.weight        model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.qkv.weight (3C,C)  model.layers.{i}.self_attn.{q,k,v}_proj.weight (C,C) each
    blocks.{i}.attn.proj.weight        model.layers.{i}.self_attn.o_proj.weight
    blocks.{i}.mlp_norm.weight         model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.mlp.{gate,up,proj}      model.layers.{i}.mlp.{gate,up,down}_proj.weight
    norm.weight                        model.norm.weight
    lm_head.weight                     lm_head.weight (absent when tied)

The embedding is padded beyond the true vocabulary (GPTConfig.vocab_size) to a multiple of
vocab_multiple, for speed: exports keep the true rows only, imports fill the true rows of the
padded table (the padding rows stay zero and are never scored).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from trainer.errors import UserError
from trainer.models.gpt import GPTConfig

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
_IGNORED = ("rotary_emb.inv_freq",)  # a buffer some older checkpoints carry: recomputed, not learned


def hf_config(cfg: GPTConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
              dtype: str = "float32") -> dict:
    """config.json of the LlamaForCausalLM equal to this GPT (its true vocabulary).

    RoPE is written both ways (`rope_theta`, read by transformers 4.x and vLLM, and
    `rope_parameters`, read by transformers 5), so either loads the same model.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def check_hf_config(directory: Path, cfg: GPTConfig, key: str = "model.init_from") -> None:
    """What shapes cannot show: the checkpoint's config.json must describe the same function as cfg."""
    config = _read_config(directory)
    if not config:
        return  # weights only: the shapes are all there is to check
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default" or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise UserError(f"{key}={directory}: the checkpoint uses scaled RoPE ({rope or scaling}), which the GPT does not implement")
    if config.get("attention_bias") or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        raise UserError(f"{key}={directory}: the checkpoint has projection biases or a non-SiLU MLP; the GPT has neither")
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    for name, theirs, ours in (("rope_theta", theta, cfg.rope_theta), ("norm_eps", config.get("rms_norm_eps"), cfg.norm_eps)):
        if theirs is not None and float(theirs) != float(ours):
            raise UserError(f"{key}={directory}: the checkpoint's {name} is {theirs} but model.{name}={ours}; "
                            f"set model.{name}={theirs}")
    if cfg.tie_embeddings and config.get("tie_word_embeddings") is False:
        raise UserError(f"{key}={directory}: the checkpoint has its own lm_head (tie_word_embeddings=false) but "
                        "model.tie_embeddings=true would drop it; set model.tie_embeddings=false")


# --------------------------------------------------------------------------- weights, ours -> HF
def to_hf_state(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF Llama tensors from our state dict, the vocabulary rows cut to the true vocabulary.

    Every tensor is a fresh contiguous CPU copy (safetensors stores each name once; tied
    weights otherwise share storage).
    """
    C, vocab_size = cfg.d_model, cfg.vocab_size
    out: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        out[name] = t.detach().to("cpu").contiguous().clone()

    put("model.embed_tokens.weight", state["embed.weight"][:vocab_size])
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        put(hf + "input_layernorm.weight", state[ours + "attn_norm.weight"])
        q, k, v = state[ours + "attn.qkv.weight"].split(C, dim=0)
        put(hf + "self_attn.q_proj.weight", q)
        put(hf + "self_attn.k_proj.weight", k)
        put(hf + "self_attn.v_proj.weight", v)
        put(hf + "self_attn.o_proj.weight", state[ours + "attn.proj.weight"])
        put(hf + "post_attention_layernorm.weight", state[ours + "mlp_norm.weight"])
        put(hf + "mlp.gate_proj.weight", state[ours + "mlp.gate.weight"])
        put(hf + "mlp.up_proj.weight", state[ours + "mlp.up.weight"])
        put(hf + "mlp.down_proj.weight", state[ours + "mlp.proj.weight"])
    put("model.norm.weight", state["norm.weight"])
    if not cfg.tie_embeddings:
        put("lm_head.weight", state["lm_head.weight"][:vocab_size])
    return out


# --------------------------------------------------------------------------- weights, HF -> ours
def expected_hf_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The HF tensor names and shapes a Llama checkpoint needs to initialise this GPT (true vocabulary)."""
    C, H, V = cfg.d_model, cfg.hidden, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C)}
    for i in range(cfg.n_layers):
        hf = f"model.layers.{i}."
        shapes |= {
            hf + "input_layernorm.weight": (C,),
            hf + "self_attn.q_proj.weight": (C, C),
            hf + "self_attn.k_proj.weight": (C, C),
            hf + "self_attn.v_proj.weight": (C, C),
            hf + "self_attn.o_proj.weight": (C, C),
            hf + "post_attention_layernorm.weight": (C,),
            hf + "mlp.gate_proj.weight": (H, C),
            hf + "mlp.up_proj.weight": (H, C),
            hf + "mlp.down_proj.weight": (C, H),
        }
    shapes["model.norm.weight"] = (C,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def hf_checkpoint_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a HF safetensors checkpoint (one file or an index of shards), headers only."""
    from safetensors import safe_open

    shapes = {}
    for file in _weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def check_hf_shapes(directory: Path, cfg: GPTConfig, key: str = "model.init_from") -> None:
    """Raise UserError naming the first tensor whose shape differs (or a config value that differs)."""
    found = hf_checkpoint_shapes(directory)
    expected = expected_hf_shapes(cfg)
    for name, want in expected.items():
        have = found.get(name)
        if have is None and name == "lm_head.weight":
            have = found.get("model.embed_tokens.weight")  # a tied checkpoint initialises an untied head too
        if have is None:
            raise UserError(f"{key}={directory}: the checkpoint has no tensor {name!r} (shape {want} expected); "
                            "is it a Llama-architecture model?")
        if tuple(have) != tuple(want):
            raise UserError(
                f"{key}={directory}: tensor {name!r} has shape {tuple(have)} in the checkpoint but the model needs "
                f"{tuple(want)}. Make the model match the checkpoint's config.json (model.d_model, n_layers, n_heads, "
                "mlp_hidden; the vocabulary comes from data.tokenizer: use the checkpoint's own tokenizer directory)."
            )
    check_hf_config(directory, cfg, key)
    extra = sorted(n for n in set(found) - set(expected) - {"lm_head.weight"} if not n.endswith(_IGNORED))
    if extra:
        raise UserError(f"{key}={directory}: the checkpoint has tensors the model lacks, e.g. {extra[0]!r} "
                        f"({len(extra)} in all): model.n_layers={cfg.n_layers} may be too small")


def load_hf_weights(net: torch.nn.Module, directory: str | Path) -> int:
    """Initialise our GPT in place from a HF Llama checkpoint directory; returns the vocabulary rows loaded.

    Shapes are checked (and named) before any weight is touched; the padding rows stay as they are.
    """
    from safetensors import safe_open

    directory = Path(directory).expanduser()
    cfg: GPTConfig = net.cfg
    check_hf_shapes(directory, cfg)
    untied_in_file = "lm_head.weight" in hf_checkpoint_shapes(directory)
    C = cfg.d_model
    params = dict(net.named_parameters(remove_duplicate=False))
    rows = 0
    with torch.no_grad():
        for file in _weight_files(directory):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    if name == "model.embed_tokens.weight":
                        rows = t.shape[0]
                        params["embed.weight"][:rows].copy_(t)
                        if not cfg.tie_embeddings and not untied_in_file:
                            params["lm_head.weight"][:rows].copy_(t)
                    elif name == "lm_head.weight":
                        if not cfg.tie_embeddings:
                            params["lm_head.weight"][: t.shape[0]].copy_(t)
                    elif name == "model.norm.weight":
                        params["norm.weight"].copy_(t)
                    else:
                        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
                        if m is None or name.endswith(_IGNORED):
                            continue
                        i, rest = int(m.group(1)), m.group(2)
                        ours = f"blocks.{i}."
                        if rest.startswith("self_attn.") and rest[10] in "qkv" and rest.endswith("_proj.weight"):
                            j = "qkv".index(rest[10])
                            params[ours + "attn.qkv.weight"][j * C : (j + 1) * C].copy_(t)
                        else:
                            params[ours + _LAYER_NAMES[rest]].copy_(t)
    return rows


_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.o_proj.weight": "attn.proj.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight",
    "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.proj.weight",
}


def _read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _weight_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if (directory / HF_INDEX).is_file():
        index = json.loads((directory / HF_INDEX).read_text())
        return [directory / f for f in sorted(set(index["weight_map"].values()))]
    if (directory / HF_WEIGHTS).is_file():
        return [directory / HF_WEIGHTS]
    if not directory.is_dir():
        raise UserError(f"model.init_from={directory} is not a directory (a Hugging Face model saved with save_pretrained)")
    raise UserError(f"{directory} has no {HF_WEIGHTS} (or {HF_INDEX}): save the model with "
                    "save_pretrained(dir, safe_serialization=True)")


def gpt_config_of(model_cfg: dict, vocab_size: int | None = None) -> GPTConfig:
    """The GPTConfig a `model` config section builds (its `_target_` and other `_` keys dropped)."""
    kwargs = {k: v for k, v in model_cfg.items() if not str(k).startswith("_")}
    if vocab_size is not None and kwargs.get("vocab_size") is None:
        kwargs["vocab_size"] = vocab_size
    return GPTConfig(**kwargs)
