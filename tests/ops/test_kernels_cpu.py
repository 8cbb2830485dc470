"""The C++ CPU paths of every op against the PyTorch references: forward, every gradient,
dtypes, odd shapes, gradcheck in float64, and the argument checks at the bindings."""
from __future__ import annotations

import pytest
import torch

from trainer.ops import fused
from trainer.ops import reference as ref

pytestmark = pytest.mark.usefixtures("kernels_loaded")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Both sides compute in fp32 (float64 for float64) and round once: they agree to about an ulp.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _compare(fused_fn, ref_fn, inputs, dtype, grad_out=None):
    """Run both on copies of `inputs`; compare outputs and the gradient of every input."""
    a = [_leaf(x) for x in inputs]
    b = [_leaf(x) for x in inputs]
    out_f, out_r = fused_fn(*a), ref_fn(*b)
    outs_f = out_f if isinstance(out_f, tuple) else (out_f,)
    outs_r = out_r if isinstance(out_r, tuple) else (out_r,)
    for f, r in zip(outs_f, outs_r):
        assert f.dtype == r.dtype and f.shape == r.shape
        torch.testing.assert_close(f, r, **TOL[dtype])
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs_r]
    torch.autograd.backward(outs_f, grads)
    torch.autograd.backward(outs_r, grads)
    for x_f, x_r in zip(a, b):
        assert x_f.grad is not None, "the fused path must produce every gradient"
        torch.testing.assert_close(x_f.grad, x_r.grad, **TOL[dtype])


def test_compare_helper_catches_a_wrong_gradient():
    """The helper above must fail when a gradient is off (guards against a vacuous comparison)."""

    def scaled_grad(x):
        return ref.swiglu(x, torch.ones_like(x)) * 1.0 + (x - x.detach()) * 0.01

    with pytest.raises(AssertionError):
        _compare(scaled_grad, lambda x: ref.swiglu(x, torch.ones_like(x)), [torch.randn(5)], torch.float32)


# ---- RMSNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 123), (7, 4097), (3, 5, 64), (2, 1)])
def test_rms_norm_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    _compare(lambda x, w: fused.rms_norm(x, w, 1e-6), lambda x, w: ref.rms_norm(x, w, 1e-6), [x, w], dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_low_precision_input_with_fp32_weight(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 77, generator=g).to(dtype)
    w = 1 + 0.1 * torch.randn(77, generator=g)
    xf, wf = _leaf(x), _leaf(w)
    xr, wr = _leaf(x), _leaf(w)
    yf, yr = fused.rms_norm(xf, wf), ref.rms_norm(xr, wr)
    assert yf.dtype == dtype
    torch.testing.assert_close(yf, yr, **TOL[dtype])
    yf.float().sum().backward()
    yr.float().sum().backward()
    assert wf.grad.dtype == torch.float32
    torch.testing.assert_close(xf.grad, xr.grad, **TOL[dtype])
    torch.testing.assert_close(wf.grad, wr.grad, rtol=1e-4, atol=1e-4)


# ---- RoPE ------------------------------------------------------------------------------------


def _rope_tables(T: int, hs: int):
    inv = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,nh,nkv,T,hs", [(1, 1, 1, 1, 2), (2, 3, 3, 7, 10), (2, 4, 2, 9, 64)])
def test_rotary_matches_reference(dtype, B, nh, nkv, T, hs):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, nh, T, hs, generator=g).to(dtype)
    k = torch.randn(B, nkv, T, hs, generator=g).to(dtype)
    cos, sin = _rope_tables(T, hs)
    _compare(lambda q, k: fused.apply_rotary(q, k, cos, sin), lambda q, k: ref.apply_rotary(q, k, cos, sin), [q, k], dtype)


def test_rotary_reads_strided_views_like_the_model():
    """q/k come from qkv.split().view().transpose(): strided, last dim contiguous; no copy needed."""
    B, T, nh, hs = 2, 5, 3, 8
    qkv = torch.randn(B, T, 3 * nh * hs)
    q, k, _ = qkv.split(nh * hs, dim=2)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, T, nh, hs).transpose(1, 2)
    assert not q.is_contiguous() and q.stride(-1) == 1
    cos, sin = _rope_tables(T, hs)
    for got, want in zip(fused.apply_rotary(q, k, cos, sin), ref.apply_rotary(q, k, cos, sin)):
        assert got.is_contiguous()
        torch.testing.assert_close(got, want)


# ---- SwiGLU ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 123), (3, 4097)])
def test_swiglu_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(0)
    a = (3 * torch.randn(shape, generator=g)).to(dtype)
    b = torch.randn(shape, generator=g).to(dtype)
    _compare(fused.swiglu, ref.swiglu, [a, b], dtype)


# ---- cross-entropy ---------------------------------------------------------------------------


def _targets(n: int, vocab: int, ignore_every: int, seed: int = 0) -> torch.Tensor:
    t = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
    if ignore_every:
        t[::ignore_every] = -100
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,vocab", [(1, 5), (7, 123), (33, 4097)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_cross_entropy_matches_reference(dtype, n, vocab, z_loss):
    logits = (2 * torch.randn(n, vocab, generator=torch.Generator().manual_seed(0))).to(dtype)
    t = _targets(n, vocab, ignore_every=3 if n > 1 else 0)
    _compare(
        lambda x: fused.cross_entropy(x, t, -100, z_loss), lambda x: ref.cross_entropy(x, t, -100, z_loss), [logits], dtype
    )


def test_cross_entropy_huge_logits_stay_finite():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 1e4
    logits[2, 7] = 3e4
    t = torch.tensor([7, 1, 7, -100, 49, 0])
    x_f, x_r = _leaf(logits), _leaf(logits)
    lf, lr = fused.cross_entropy(x_f, t, -100, 1e-4), ref.cross_entropy(x_r, t, -100, 1e-4)
    assert torch.isfinite(lf)
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-2)
    lf.backward()
    lr.backward()
    assert torch.isfinite(x_f.grad).all()
    torch.testing.assert_close(x_f.grad, x_r.grad, rtol=1e-4, atol=1e-5)


def test_cross_entropy_all_ignored_is_zero_loss_and_zero_grad():
    x = _leaf(torch.randn(4, 9))
    loss = fused.cross_entropy(x, torch.full((4,), -100), -100, 0.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_cross_entropy_custom_ignore_index():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 3, 3, 6, 1])
    torch.testing.assert_close(fused.cross_entropy(x, t, 3, 0.0), ref.cross_entropy(x, t, 3, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n,dim,vocab", [(1, 8, 11), (37, 13, 123), (64, 32, 257)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("chunk_rows", [0, 5])  # the kernel's choice (one chunk here), and several with a short last one
def test_fused_linear_cross_entropy_matches_reference(dtype, n, dim, vocab, z_loss, chunk_rows):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, dim, generator=g).to(dtype)
    w = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(dtype)
    t = _targets(n, vocab, ignore_every=4 if n > 1 else 0)
    # The reference rounds the logits to `dtype` before the fp32 loss; so does the fused chunk.
    _compare(
        lambda h, w: fused.fused_linear_cross_entropy(h, w, t, -100, z_loss, chunk_rows=chunk_rows),
        lambda h, w: ref.linear_cross_entropy(h, w, t, -100, z_loss),
        [h, w],
        dtype,
    )


def test_fused_linear_cross_entropy_without_grad_gives_the_same_loss():
    g = torch.Generator().manual_seed(0)
    h, w, t = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g), _targets(50, 300, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused.fused_linear_cross_entropy(h, w, t), ref.linear_cross_entropy(h, w, t))
    loss, gh, gw = torch.ops.trainer_kernels.fused_linear_cross_entropy_fwd(h, w, t, -100, 0.0, False)
    assert gh.numel() == 0 and gw.numel() == 0  # nothing spent on gradients


# ---- gradcheck in float64 --------------------------------------------------------------------


def _d(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def test_gradcheck_rms_norm():
    assert torch.autograd.gradcheck(lambda x, w: fused.rms_norm(x, w, 1e-5), (_d(5, 13), _d(13, seed=1)))


def test_gradcheck_rotary():
    cos, sin = _rope_tables(5, 6)
    assert torch.autograd.gradcheck(lambda q, k: fused.apply_rotary(q, k, cos, sin), (_d(2, 3, 5, 6), _d(2, 1, 5, 6, seed=1)))


def test_gradcheck_swiglu():
    assert torch.autograd.gradcheck(fused.swiglu, (_d(4, 9), _d(4, 9, seed=1)))


def test_gradcheck_cross_entropy():
    t = torch.tensor([1, -100, 3, 10, 0, 4])
    assert torch.autograd.gradcheck(lambda x: fused.cross_entropy(x, t, -100, 1e-2), (_d(6, 11),))


@pytest.mark.parametrize("chunk_rows", [0, 3])
def test_gradcheck_fused_linear_cross_entropy(chunk_rows):
    t = torch.tensor([1, -100, 3, 10, 0, 4, 2])
    assert torch.autograd.gradcheck(
        lambda h, w: fused.fused_linear_cross_entropy(h, w, t, -100, 1e-2, chunk_rows=chunk_rows),
        (_d(7, 5), _d(11, 5, seed=1)),
    )


# ---- argument checks at the binding ------------------------------------------------------------


def test_binding_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"rms_norm_fwd: weight must have shape \(8,\)"):
        torch.ops.trainer_kernels.rms_norm_fwd(torch.randn(4, 8), torch.ones(7), 1e-6)


def test_binding_rejects_non_contiguous_input():
    with pytest.raises(ValueError, match="x must be contiguous"):
        torch.ops.trainer_kernels.rms_norm_fwd(torch.randn(8, 4).t(), torch.ones(8), 1e-6)


def test_binding_rejects_integer_tensors():
    with pytest.raises(TypeError, match="swiglu_fwd: a must be float32, float16, bfloat16 or float64"):
        torch.ops.trainer_kernels.swiglu_fwd(torch.ones(3, dtype=torch.int32), torch.ones(3, dtype=torch.int32))


def test_binding_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must have the same shape"):
        torch.ops.trainer_kernels.swiglu_fwd(torch.ones(3), torch.ones(4))


def test_binding_rejects_int32_targets_and_out_of_range_targets():
    with pytest.raises(TypeError, match="targets must be Long"):
        torch.ops.trainer_kernels.cross_entropy_fwd(torch.randn(2, 5), torch.tensor([1, 2], dtype=torch.int32), -100, 0.0)
    with pytest.raises(IndexError, match="target 5 at row 1 is outside"):
        torch.ops.trainer_kernels.cross_entropy_fwd(torch.randn(2, 5), torch.tensor([1, 5]), -100, 0.0)


def test_binding_rejects_odd_head_dim_and_wrong_tables():
    q = torch.randn(1, 2, 3, 5)
    with pytest.raises(ValueError, match="head_dim must be even"):
        torch.ops.trainer_kernels.rotary(q, q, torch.ones(3, 2), torch.ones(3, 2), False)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"cos must be \(T=3, head_dim/2=2\)"):
        torch.ops.trainer_kernels.rotary(q, q, torch.ones(4, 2), torch.ones(3, 2), False)
    with pytest.raises(TypeError, match="sin must be Float"):
        torch.ops.trainer_kernels.rotary(q, q, torch.ones(3, 2), torch.ones(3, 2, dtype=torch.float64), False)


def test_binding_rejects_a_negative_chunk_size():
    h, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="chunk_rows must be >= 0"):
        torch.ops.trainer_kernels.fused_linear_cross_entropy_fwd(h, w, t, -100, 0.0, True, -1)


def test_binding_rejects_mismatched_linear_shapes():
    with pytest.raises(ValueError, match=r"hidden must be \(N, D\) and weight \(V, D\)"):
        torch.ops.trainer_kernels.fused_linear_cross_entropy_fwd(
            torch.randn(4, 8), torch.randn(10, 9), torch.zeros(4, dtype=torch.long), -100, 0.0, True
        )


def test_fused_linear_cross_entropy_of_no_rows_has_zero_gradients():
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    loss = fused.fused_linear_cross_entropy(h, w, torch.empty(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.shape == (0, 8)
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0
