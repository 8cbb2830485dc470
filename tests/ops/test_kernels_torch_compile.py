"""torch.compile traces through the custom ops (fake implementations + registered autograd)."""
from __future__ import annotations

import pytest
import torch

from trainer import ops
from trainer.models.gpt import GPT, GPTConfig
from trainer.ops import fused


def _loss_and_grads(model: GPT, idx: torch.Tensor, run=None):
    model.zero_grad()
    loss = (run if run is not None else model)(idx, idx.roll(-1, dims=1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused_loss", [False, True])
def test_compiled_gpt_with_fused_ops_matches_eager_reference(fused_mode, fused_loss):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2, fused_loss=fused_loss)
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # no graph break at any op
    loss_f, grads_f = _loss_and_grads(model, idx, run=compiled)
    ops.set_kernel_mode("reference")
    loss_r, grads_r = _loss_and_grads(model, idx)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-5)
    for name, g in grads_r.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_inductor_compiles_around_the_ops(fused_mode):
    """The default backend generates code for the surrounding ops and calls ours."""

    def block(x, w, a, b):
        return fused.rms_norm(x * 2, w).sum() + fused.swiglu(a, b + 1).sum()

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(4, 24, generator=g), torch.ones(24), torch.randn(4, 24, generator=g), torch.randn(4, 24, generator=g)]
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(*args), block(*args))
