"""The whole GPT with kernels=fused (and the fused linear cross-entropy) against kernels=reference:
loss and every parameter gradient of one step, on the same weights and batch.

Unlike a loss curve, one step is not chaotic, so this compares the fused ops together, on the
layouts and dtype mix the model really produces (strided q/k, fp32 residual with bf16 matmul
outputs under autocast, a tied embedding / output weight). On the CPU (the C++ paths) and, marked
gpu, on CUDA (the kernels).
"""
from __future__ import annotations

import pytest
import torch

from trainer import ops
from trainer.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("kernels_loaded")

CFG = dict(vocab_size=96, seq_len=32, d_model=64, n_layers=2, n_heads=4)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


def _batch(B: int = 4, T: int = 32, vocab: int = 96):
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, vocab, (B, T + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def _loss_and_grads(mode: str, fused_loss: bool, dtype: torch.dtype, autocast: bool, device: str):
    ops.set_kernel_mode(mode)
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**CFG, fused_loss=fused_loss)).to(device, dtype)
        idx, tgt = (t.to(device) for t in _batch())
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(idx, tgt)
        loss.backward()
        return loss.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}
    finally:
        ops.set_kernel_mode("reference")


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda":  # fp32 matmuls in full fp32, so "exact" means what it says
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        yield "cuda"
        torch.backends.cuda.matmul.allow_tf32 = previous
    else:
        yield "cpu"


def test_one_step_matches_the_reference_in_fp32(device):
    loss_r, grads_r = _loss_and_grads("reference", False, torch.float32, autocast=False, device=device)
    loss_f, grads_f = _loss_and_grads("fused", True, torch.float32, autocast=False, device=device)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_one_step_under_bf16_autocast_is_as_accurate_as_the_reference(device):
    """Each gradient's error against a float64 run is at most twice the reference's own bf16 error."""
    loss_x, exact = _loss_and_grads("reference", False, torch.float64, autocast=False, device=device)
    loss_r, grads_r = _loss_and_grads("reference", False, torch.float32, autocast=True, device=device)
    loss_f, grads_f = _loss_and_grads("fused", True, torch.float32, autocast=True, device=device)
    assert abs(loss_f - loss_x) <= 2 * abs(loss_r - loss_x) + 1e-3 * abs(loss_x)
    for name, e in exact.items():
        err_f = (grads_f[name] - e).norm() / e.norm()
        err_r = (grads_r[name] - e).norm() / e.norm()
        assert err_f <= 2 * err_r + 1e-4, f"{name}: fused relative error {err_f:.3g} vs reference {err_r:.3g}"
