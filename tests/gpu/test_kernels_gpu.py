"""The CUDA kernels on a GPU: accuracy against float64 references, relative to PyTorch's own
low-precision error; every output element written.

Elsewhere, marked gpu: the same ops on the layouts the model passes (tests/ops/test_kernels_layouts.py),
the whole GPT's one-step gradients (tests/ops/test_kernels_model_grads.py) and training over seeds
(tests/gpu/test_convergence_gpu.py)."""
from __future__ import annotations

import pytest
import torch

from trainer import ops
from trainer.ops import fused
from trainer.ops import reference as ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEV = "cuda"
LOW = [torch.bfloat16, torch.float16, torch.float32]


@pytest.fixture(scope="module", autouse=True)
def cuda_kernels():
    assert ops.set_kernel_mode("fused") == "fused"
    status = ops.kernel_status()
    assert status["extension"]["with_cuda"], status
    yield status
    ops.set_kernel_mode("reference")


def _run(fn, inputs):
    """Outputs and input gradients of fn for upstream gradients fixed by a seed."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator(device=DEV).manual_seed(7)
    grads = [torch.randn(o.shape, device=DEV, generator=g, dtype=torch.float32).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs] + [x.grad for x in leaves if x.requires_grad]


def _check_against_torch(fused_fn, ref_fn, inputs, what: str):
    """Each fused result's max error vs a float64 reference is at most twice the error of
    the same reference computed by PyTorch in the inputs' precision (plus a 1e-6 relative floor)."""
    exact = _run(ref_fn, [x.double() if x.is_floating_point() else x for x in inputs])
    torch_low = _run(ref_fn, inputs)
    mine = _run(fused_fn, inputs)
    assert len(mine) == len(exact)
    for i, (m, t, e) in enumerate(zip(mine, torch_low, exact)):
        assert m.shape == e.shape, (what, i)
        assert torch.isfinite(m).all(), f"{what}[{i}]: non-finite values"
        err_mine = (m.double() - e).abs().max().item()
        err_torch = (t.double() - e).abs().max().item()
        floor = 1e-6 * e.abs().max().item()
        assert err_mine <= 2 * err_torch + floor, f"{what}[{i}]: fused error {err_mine:.3g} > 2 x torch {err_torch:.3g}"


def _rope(T, hs):
    inv = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=torch.float32, device=DEV) / hs))
    ang = torch.outer(torch.arange(T, dtype=torch.float32, device=DEV), inv)
    return ang.cos(), ang.sin()


def _randn(*shape, scale=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (scale * torch.randn(*shape, device=DEV, generator=g)).to(dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("rows,dim", [(1, 123), (1000, 4097), (4096, 4096), (37, 8192)])
def test_rms_norm(dtype, rows, dim):
    x, w = _randn(rows, dim, dtype=dtype), (1 + _randn(dim, scale=0.1, seed=1)).to(dtype)
    _check_against_torch(lambda x, w: fused.rms_norm(x, w), lambda x, w: ref.rms_norm(x, w), [x, w], f"rms_norm{dtype}")


def test_rms_norm_bf16_input_fp32_weight():
    x, w = _randn(512, 2048, dtype=torch.bfloat16), 1 + _randn(2048, scale=0.1, seed=1)
    _check_against_torch(lambda x, w: fused.rms_norm(x, w), lambda x, w: ref.rms_norm(x, w), [x, w], "rms_norm mixed")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("B,nh,nkv,T,hs", [(1, 1, 1, 1, 2), (2, 3, 3, 17, 10), (2, 32, 8, 512, 128)])
def test_rotary(dtype, B, nh, nkv, T, hs):
    q, k = _randn(B, nh, T, hs, dtype=dtype), _randn(B, nkv, T, hs, dtype=dtype, seed=1)
    cos, sin = _rope(T, hs)
    _check_against_torch(
        lambda q, k: fused.apply_rotary(q, k, cos, sin), lambda q, k: ref.apply_rotary(q, k, cos, sin), [q, k], f"rotary{dtype}"
    )


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(1,), (7, 123), (1024, 4097), (2048, 5632)])
def test_swiglu(dtype, shape):
    a, b = _randn(*shape, scale=3.0, dtype=dtype), _randn(*shape, dtype=dtype, seed=1)
    _check_against_torch(fused.swiglu, ref.swiglu, [a, b], f"swiglu{dtype}")


def _targets(n, vocab, ignore_every=5, seed=0):
    """Random targets with every ignore_every-th row ignored from row 1 on: row 0 always counts, so
    a single row is a real target (not an all-ignored batch that checks nothing)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = torch.randint(0, vocab, (n,), device=DEV, generator=g)
    t[1::ignore_every] = -100
    assert (t != -100).any()
    return t


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n,vocab", [(1, 5), (513, 50257), (256, 128256), (64, 4097)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_cross_entropy(dtype, n, vocab, z_loss):
    logits, t = _randn(n, vocab, scale=4.0, dtype=dtype), _targets(n, vocab, ignore_every=5)
    _check_against_torch(
        lambda x: fused.cross_entropy(x, t, -100, z_loss), lambda x: ref.cross_entropy(x, t, -100, z_loss), [logits], "ce"
    )


@pytest.mark.parametrize("op", ["ce", "flce"])
def test_every_target_ignored_gives_zero_loss_and_zero_gradients(op):
    """All rows ignored (a batch of padding): loss 0 and zero gradients, not NaN (0 / 0)."""
    h, w = _randn(8, 32, dtype=torch.bfloat16), _randn(100, 32, scale=0.2, dtype=torch.bfloat16, seed=1)
    t = torch.full((8,), -100, device=DEV)
    h.requires_grad_(), w.requires_grad_()
    loss = fused.cross_entropy(h @ w.t(), t) if op == "ce" else fused.fused_linear_cross_entropy(h, w, t)
    loss.backward()
    assert loss.item() == 0.0
    assert h.grad.abs().max().item() == 0.0 and w.grad.abs().max().item() == 0.0


def test_cross_entropy_huge_logits():
    logits = _randn(64, 32000, scale=1e3)
    t = _targets(64, 32000)
    _check_against_torch(lambda x: fused.cross_entropy(x, t), lambda x: ref.cross_entropy(x, t), [logits], "ce huge")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,dim,vocab,chunk_rows", [(1, 64, 1000, 0), (1000, 256, 32000, 0), (1000, 256, 32000, 300),
                                                    (4096, 1024, 50257, 0)])
def test_fused_linear_cross_entropy(dtype, n, dim, vocab, chunk_rows):
    h = _randn(n, dim, dtype=dtype)
    w = _randn(vocab, dim, scale=dim**-0.5, dtype=dtype, seed=1)
    t = _targets(n, vocab, ignore_every=7)
    _check_against_torch(
        lambda h, w: fused.fused_linear_cross_entropy(h, w, t, -100, 1e-4, chunk_rows=chunk_rows),
        lambda h, w: ref.linear_cross_entropy(h, w, t, -100, 1e-4),
        [h, w],
        "flce",
    )


# ---- every output element written ---------------------------------------------------------------


def _poisoned_call(fn, *args):
    """Call fn once to learn its outputs' sizes, fill same-sized blocks with NaN and free them
    (the caching allocator hands them back to the next call), call again. Returns the outputs
    and whether at least one output landed on poisoned memory."""
    outs = fn(*args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    sizes = [(o.numel(), o.dtype) for o in outs]
    del outs
    torch.cuda.synchronize()
    poison = [torch.full((n,), float("nan"), dtype=d, device=DEV) for n, d in sizes]
    ptrs = {p.data_ptr() for p in poison}
    del poison
    outs = fn(*args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return outs, any(o.data_ptr() in ptrs for o in outs)


def _poison_cases():
    ops_ = torch.ops.trainer_kernels
    bf = torch.bfloat16
    x, w = _randn(333, 4097, dtype=bf), _randn(4097, dtype=bf)
    y, rstd = ops_.rms_norm_fwd(x, w, 1e-6)
    gy = _randn(333, 4097, dtype=bf, seed=3)
    q, k = _randn(2, 6, 33, 64, dtype=bf), _randn(2, 2, 33, 64, dtype=bf, seed=1)
    cos, sin = _rope(33, 64)
    a, b = _randn(5, 1001, dtype=bf), _randn(5, 1001, dtype=bf, seed=1)
    logits, t = _randn(77, 50257, dtype=bf), _targets(77, 50257)
    loss, stats = ops_.cross_entropy_fwd(logits, t, -100, 0.0)
    h, wv = _randn(300, 128, dtype=bf), _randn(5003, 128, scale=0.1, dtype=bf, seed=2)
    return {
        "rms_norm_fwd": (ops_.rms_norm_fwd, (x, w, 1e-6)),
        "rms_norm_bwd": (ops_.rms_norm_bwd, (gy, x, w, rstd)),
        "rotary": (ops_.rotary, (q, k, cos, sin, False)),
        "swiglu_fwd": (ops_.swiglu_fwd, (a, b)),
        "swiglu_bwd": (ops_.swiglu_bwd, (a, b, a)),
        "cross_entropy_fwd": (ops_.cross_entropy_fwd, (logits, t, -100, 0.0)),
        "cross_entropy_bwd": (ops_.cross_entropy_bwd, (torch.ones_like(loss), logits, t, stats, -100, 0.0)),
        "fused_linear_cross_entropy_fwd": (ops_.fused_linear_cross_entropy_fwd, (h, wv, _targets(300, 5003), -100, 0.0, True)),
    }


POISON_OPS = [
    "rms_norm_fwd", "rms_norm_bwd", "rotary", "swiglu_fwd", "swiglu_bwd", "cross_entropy_fwd", "cross_entropy_bwd",
    "fused_linear_cross_entropy_fwd",
]


@pytest.mark.parametrize("name", POISON_OPS)
def test_every_output_element_is_written(name):
    fn, args = _poison_cases()[name]
    outs, hit = _poisoned_call(fn, *args)
    for o in outs:
        assert not torch.isnan(o).any(), f"{name}: unwritten (NaN) elements in an output of shape {tuple(o.shape)}"
    assert hit, f"{name}: no output reused the poisoned memory, so this check saw nothing"


def test_out_of_range_target_gives_nan_loss_not_a_crash():
    loss, _ = torch.ops.trainer_kernels.cross_entropy_fwd(_randn(3, 10), torch.tensor([1, 10, -100], device=DEV), -100, 0.0)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0]) and loss[2] == 0
