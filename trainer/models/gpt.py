"""A small Llama-style GPT, readable top to bottom.

RMSNorm, rotary position embeddings, SwiGLU MLP, causal attention through
scaled_dot_product_attention, tied input/output embeddings. A plain nn.Module:
precision, parallelism and wrapping are applied from outside.
Shapes: B batch, T sequence, C d_model, nh heads, hs head size, V vocab.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import ops
from trainer.errors import UserError


@dataclass
class GPTConfig:
    vocab_size: Optional[int] = None  # the tokenizer's true vocabulary; None: taken from the data at build time
    vocab_multiple: int = 64  # embedding rows padded up to a multiple of this, for fast matmuls (not in the loss)
    seq_len: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int | None = None  # default: 8/3 * d_model rounded up to a multiple of 64
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    fused_loss: bool = False  # linear + cross-entropy without materialising all logits
    # A Hugging Face Llama checkpoint directory to start from (fine-tuning). The trainer's build step
    # loads it (trainer.models.llama_hf.load_hf_weights) after this model is constructed.
    init_from: Optional[str] = None

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and lm_head. The rows past vocab_size are never an input or a target,
        and their logits are masked to -inf: they take no probability mass."""
        m = max(1, self.vocab_multiple)
        return m * math.ceil(self.vocab_size / m)

    def __post_init__(self) -> None:
        """The shape rules (checked when the config is validated, before anything is built)."""
        for key in ("d_model", "n_heads", "n_layers", "seq_len"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise UserError(f"model.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise UserError(f"model.vocab_size must be positive (or null: from the tokenizer), got {self.vocab_size}")
        if self.d_model % self.n_heads:
            divisors = [k for k in range(1, min(self.d_model, 64) + 1) if self.d_model % k == 0]
            raise UserError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}: "
                            f"pick n_heads from {divisors}")
        if self.head_dim % 2:
            raise UserError(f"head size model.d_model/model.n_heads={self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.d_model / 3 / 64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, hs/2), fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = ops.apply_rotary(q, k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    """SwiGLU: proj(silu(x W_gate) * (x W_up))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.proj(ops.swiglu(self.gate(x), self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x


class GPT(nn.Module):
    config_class = GPTConfig  # the config's keys are GPTConfig's fields

    def __init__(self, cfg: GPTConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or GPTConfig(**kwargs)
        if cfg.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size is not set (the trainer fills it from the data)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        # Buffers travel with .to(device) but are not trained and not checkpointed.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 style: scale the residual projections by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        with torch.no_grad():  # padding rows: never used, so zero (they stay so: no gradient reaches them)
            self.embed.weight[cfg.vocab_size :].zero_()
            self.lm_head.weight[cfg.vocab_size :].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids. Returns logits (B, T, V) without targets, else the mean loss.

        V is the true vocabulary: the padding rows of lm_head are computed (the padded matmul is the
        fast one) but their logits are cut off, or set to -inf inside the loss. With cfg.fused_loss the
        loss is computed chunk by chunk from the hidden states over the true rows of lm_head only,
        so the (B*T, V) logits never exist at once.
        """
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than model.seq_len={self.cfg.seq_len}")
        x = self.embed(idx)  # (B, T, C)
        cos, sin = self.rope_cos.to(x.device), self.rope_sin.to(x.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        V, padded = self.cfg.vocab_size, self.cfg.padded_vocab_size > self.cfg.vocab_size
        if targets is None:
            logits = self.lm_head(x)  # (B, T, V_padded)
            return logits[..., :V] if padded else logits  # (B, T, V)
        flat_x, flat_t = x.reshape(B * T, -1), targets.reshape(B * T)
        if self.cfg.fused_loss:
            weight = self.lm_head.weight[:V] if padded else self.lm_head.weight  # (V, C), still contiguous
            return ops.fused_linear_cross_entropy(flat_x, weight, flat_t)
        logits = self.lm_head(flat_x)  # (B*T, V_padded)
        if padded:
            logits[:, V:] = float("-inf")  # in place: the matmul's backward does not need its output
        return ops.cross_entropy(logits, flat_t)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the weights plus the attention score/value term.

        N counts all matmul weights (the tied lm_head included once, the embedding lookup not).
        The attention term is 12 * n_layers * d_model * T (fwd+bwd of QK^T and AV, with the
        causal half not subtracted, the PaLM convention).
        """
        c = self.cfg
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embed" not in n)
        if c.tie_embeddings:
            n_matmul += self.lm_head.weight.numel()
        return 6 * n_matmul + 12 * c.n_layers * c.d_model * c.seq_len

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Sample continuation tokens for idx (B, T); temperature 0 is greedy. Recomputes the full window each step."""
        for _ in range(max_new_tokens):
            window = idx[:, -self.cfg.seq_len :]
            if temperature == 0:
                idx = torch.cat((idx, self(window)[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
                continue
            logits = self(window)[:, -1, :] / max(temperature, 1e-5)  # (B, V)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
