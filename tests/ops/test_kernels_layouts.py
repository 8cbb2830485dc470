"""The fused ops on the memory layouts a model hands them, against the references.

The per-op tests feed contiguous tensors and contiguous upstream gradients. In a model the
inputs are views (q/k from qkv.split().view().transpose(), slices, transposes, broadcasts)
and autograd hands the backward whatever layout the consumer produced: transposed, strided,
or expanded with stride 0 (the gradient of a sum or mean). Every op here sees such inputs and
such gradients; outputs and every input gradient must match the reference path. Every case runs
on the CPU (the C++ paths) and, marked gpu, on CUDA (the kernels; float64 is CPU-only there).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from trainer.ops import fused
from trainer.ops import reference as ref

pytestmark = pytest.mark.usefixtures("kernels_loaded")

DTYPES = [torch.float64, torch.float32, torch.bfloat16]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


_DEVICE = {"name": "cpu"}  # the device of the running test (set by the autouse fixture below)


@pytest.fixture(autouse=True, params=DEVICES)
def device(request):
    """Every case on each device."""
    if request.param == "cuda" and request.node.callspec.params.get("dtype") == torch.float64:
        pytest.skip("the CUDA kernels take float32, float16 and bfloat16 (float64 is the CPU path's)")
    _DEVICE["name"] = request.param
    yield request.param
    _DEVICE["name"] = "cpu"


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(_DEVICE["name"])


def _grad_like(out: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    """An upstream gradient of out's shape and dtype in the given memory layout."""
    shape = tuple(out.shape)
    if layout == "contiguous" or not shape:  # a scalar has one layout
        g = _randn(*shape, dtype=out.dtype, seed=seed)
    elif layout == "transposed":  # reversed dims in memory: no stride is 1 where the op expects it
        g = _randn(*reversed(shape), dtype=out.dtype, seed=seed).permute(*reversed(range(len(shape))))
    elif layout == "strided":  # every other element of a wider buffer along the last dim
        g = _randn(*shape[:-1], 2 * shape[-1], dtype=out.dtype, seed=seed)[..., ::2]
    elif layout == "expanded":  # stride 0 in every dim but the last, like the gradient of a sum
        g = _randn(shape[-1], dtype=out.dtype, seed=seed).expand(shape)
    else:
        raise ValueError(layout)
    assert g.shape == out.shape
    assert layout == "contiguous" or not g.is_contiguous() or g.dim() < 2
    return g


def _run(fn: Callable, leaves: list[torch.Tensor], grad_layout: str):
    """Outputs of fn(*leaves), and each leaf's gradient for upstream gradients in grad_layout."""
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    grads = [_grad_like(o, grad_layout, seed=10 + i) for i, o in enumerate(outs)]
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs], [x.grad for x in leaves]


def _check(fused_fn: Callable, ref_fn: Callable, leaves: list[torch.Tensor], grad_layout: str, dtype) -> None:
    outs_f, grads_f = _run(fused_fn, leaves, grad_layout)
    outs_r, grads_r = _run(ref_fn, leaves, grad_layout)
    for f, r in zip(outs_f, outs_r):
        assert f.dtype == r.dtype and f.shape == r.shape
        torch.testing.assert_close(f, r, **TOL[dtype])
    for i, (f, r) in enumerate(zip(grads_f, grads_r)):
        assert f is not None, f"no gradient for input {i}"
        if r is None:  # the reference never touched this input: zeros are the same gradient
            r = torch.zeros_like(f)
        torch.testing.assert_close(f, r, **TOL[dtype], msg=lambda m: f"input {i} gradient: {m}")


GRAD_LAYOUTS = ["contiguous", "transposed", "strided", "expanded"]


def _rope_tables(T: int, hs: int):
    inv = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    return ang.cos().to(_DEVICE["name"]), ang.sin().to(_DEVICE["name"])


# Each case: the leaves, and a function from leaves to the op's inputs as non-contiguous views.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("view", ["transposed", "strided_rows", "strided_last"])
def test_rms_norm_on_views(dtype, grad_layout, view):
    D, N = 24, 6
    if view == "transposed":  # x stored (D, N), used as (N, D)
        xs, views = _randn(D, N, dtype=dtype, seed=0), lambda x: x.t()
    elif view == "strided_rows":  # every other row of a (2N, D) buffer
        xs, views = _randn(2 * N, D, dtype=dtype, seed=0), lambda x: x[::2]
    else:  # last dim with stride 2
        xs, views = _randn(N, 2 * D, dtype=dtype, seed=0), lambda x: x[:, ::2]
    w = 1 + 0.1 * _randn(2 * D, dtype=dtype, seed=1)
    _check(
        lambda x, w: fused.rms_norm(views(x), w[::2], 1e-6),
        lambda x, w: ref.rms_norm(views(x), w[::2], 1e-6),
        [xs, w],
        grad_layout,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("view", ["model", "last_dim_strided"])
def test_rotary_on_views(dtype, grad_layout, view):
    B, T, nh, hs = 2, 5, 3, 8
    cos, sin = _rope_tables(T, hs)
    if view == "model":  # qkv.split().view().transpose(), as in the GPT

        def views(qkv):
            q, k, _v = qkv.split(nh * hs, dim=2)
            return q.view(B, T, nh, hs).transpose(1, 2), k.view(B, T, nh, hs).transpose(1, 2)

        leaf = _randn(B, T, 3 * nh * hs, dtype=dtype, seed=0)
    else:  # stored (B, nh, hs, T): the head dim has stride T

        def views(qk):
            return qk[0].transpose(-1, -2), qk[1].transpose(-1, -2)

        leaf = _randn(2, B, nh, hs, T, dtype=dtype, seed=0)
    _check(
        lambda x: fused.apply_rotary(*views(x), cos, sin),
        lambda x: ref.apply_rotary(*views(x), cos, sin),
        [leaf],
        grad_layout,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_when_only_q_gets_a_gradient(dtype):
    B, T, nh, hs = 1, 4, 2, 6
    cos, sin = _rope_tables(T, hs)
    q, k = _randn(B, nh, T, hs, dtype=dtype, seed=0), _randn(B, nh, T, hs, dtype=dtype, seed=1)
    _check(
        lambda q, k: fused.apply_rotary(q, k, cos, sin)[0],
        lambda q, k: ref.apply_rotary(q, k, cos, sin)[0],
        [q, k],
        "transposed",
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
def test_swiglu_on_views(dtype, grad_layout):
    N, H = 6, 20
    a = 3 * _randn(H, N, dtype=dtype, seed=0)  # used transposed
    b = _randn(1, H, dtype=dtype, seed=1)  # broadcast over rows (stride 0)
    _check(
        lambda a, b: fused.swiglu(a.t(), b.expand(N, H)),
        lambda a, b: ref.swiglu(a.t(), b.expand(N, H)),
        [a, b],
        grad_layout,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_layout", ["contiguous", "expanded"])
def test_cross_entropy_on_transposed_logits(dtype, grad_layout):
    N, V = 9, 31
    t = torch.randint(0, V, (2 * N,), generator=torch.Generator().manual_seed(2)).to(_DEVICE["name"])[::2]  # strided
    t[3] = -100
    logits = 2 * _randn(V, N, dtype=dtype, seed=0)
    # A scalar loss times a factor: the upstream gradient of a scaled / averaged loss.
    _check(
        lambda x: fused.cross_entropy(x.t(), t) * 0.5,
        lambda x: ref.cross_entropy(x.t(), t) * 0.5,
        [logits],
        grad_layout,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_cross_entropy_on_views_and_tied_weight(dtype):
    """hidden transposed in memory, weight a strided slice and also used a second time
    (an embedding lookup, as with tied embeddings), loss scaled like gradient accumulation."""
    N, D, V = 40, 8, 300
    hidden = _randn(D, N, dtype=dtype, seed=0)
    weight = _randn(V, 2 * D, dtype=dtype, seed=1) / D**0.5
    t = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2)).to(_DEVICE["name"])
    t[::7] = -100
    idx = torch.randint(0, V, (5,), generator=torch.Generator().manual_seed(3)).to(_DEVICE["name"])

    def model(lce):
        def fn(h, w):
            w = w[:, ::2]
            emb = torch.nn.functional.embedding(idx, w)
            return lce(h.t(), w, t) / 4 + (emb.float() ** 2).sum() * 1e-2

        return fn

    def several_chunks(h, w, t):  # 6 chunks, the last one short
        return fused.fused_linear_cross_entropy(h, w, t, chunk_rows=7)

    _check(model(several_chunks), model(ref.linear_cross_entropy), [hidden, weight], "contiguous", dtype)

    def reference_chunks(h, w, t):  # the reference route (what auto runs where the kernel is not chosen)
        return ref.fused_linear_cross_entropy(h, w, t, chunk_rows=7)

    _check(model(reference_chunks), model(ref.linear_cross_entropy), [hidden, weight], "contiguous", dtype)


def test_fused_linear_cross_entropy_under_autocast_matches_the_unfused_loss():
    """fp32 hidden and weight inside a bf16 autocast region (the GPT's fused_loss path): the
    fused op must round and accumulate like lm_head + cross_entropy do under autocast."""
    N, D, V = 64, 16, 96
    hidden = _randn(N, D, dtype=torch.float32, seed=0)
    weight = _randn(V, D, dtype=torch.float32, seed=1) / D**0.5
    t = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2)).to(_DEVICE["name"])

    def under_autocast(fn):
        def run(h, w):
            with torch.autocast(_DEVICE["name"], dtype=torch.bfloat16):
                return fn(h, w)

        return run

    outs_f, grads_f = _run(under_autocast(lambda h, w: fused.fused_linear_cross_entropy(h, w, t)), [hidden, weight], "contiguous")
    outs_r, grads_r = _run(
        under_autocast(lambda h, w: ref.cross_entropy(torch.nn.functional.linear(h, w), t)), [hidden, weight], "contiguous"
    )
    torch.testing.assert_close(outs_f[0], outs_r[0], rtol=1e-3, atol=1e-3)
    for f, r in zip(grads_f, grads_r):
        assert f.dtype == torch.float32
        # Both round the logits' gradient and the product to bf16 once: a bf16 ulp apart at most.
        torch.testing.assert_close(f, r, rtol=1e-2, atol=1e-4)
