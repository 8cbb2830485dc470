"""The CUDA kernels on a GPU: accuracy against float64 references, relative to PyTorch's own
low-precision error; every output element written; a 200-step convergence run of the GPT."""
from __future__ import annotations

import math

import pytest
import torch

from trainer import ops
from trainer.models.gpt import GPT, GPTConfig
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
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = torch.randint(0, vocab, (n,), device=DEV, generator=g)
    t[::ignore_every] = -100
    return t


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n,vocab", [(1, 5), (513, 50257), (256, 128256), (64, 4097)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_cross_entropy(dtype, n, vocab, z_loss):
    logits, t = _randn(n, vocab, scale=4.0, dtype=dtype), _targets(n, vocab, ignore_every=5 if n > 1 else 10)
    _check_against_torch(
        lambda x: fused.cross_entropy(x, t, -100, z_loss), lambda x: ref.cross_entropy(x, t, -100, z_loss), [logits], "ce"
    )


def test_cross_entropy_huge_logits():
    logits = _randn(64, 32000, scale=1e3)
    t = _targets(64, 32000)
    _check_against_torch(lambda x: fused.cross_entropy(x, t), lambda x: ref.cross_entropy(x, t), [logits], "ce huge")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,dim,vocab", [(1, 64, 1000), (1000, 256, 32000), (4096, 1024, 50257)])
def test_fused_linear_cross_entropy(dtype, n, dim, vocab):
    h = _randn(n, dim, dtype=dtype)
    w = _randn(vocab, dim, scale=dim**-0.5, dtype=dtype, seed=1)
    t = _targets(n, vocab, ignore_every=7 if n > 1 else 10)
    _check_against_torch(
        lambda h, w: fused.fused_linear_cross_entropy(h, w, t, -100, 1e-4),
        lambda h, w: ref.fused_linear_cross_entropy(h, w, t, -100, 1e-4),
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


# ---- convergence ----------------------------------------------------------------------------------


def _pattern_batches(vocab: int, batch: int, seq: int, steps: int, seed: int = 0):
    """Sequences that follow a fixed random permutation (next = perm[current]): learnable to ~0 loss."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=g)
    for _ in range(steps):
        tok = torch.randint(0, vocab, (batch,), generator=g)
        seqs = [tok]
        for _ in range(seq):
            tok = perm[tok]
            seqs.append(tok)
        data = torch.stack(seqs, dim=1)
        yield data[:, :-1].to(DEV), data[:, 1:].to(DEV)


def _train(mode: str, fused_loss: bool, steps: int = 200) -> list[float]:
    ops.set_kernel_mode(mode)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, seq_len=128, d_model=128, n_layers=4, n_heads=4, fused_loss=fused_loss)
    model = GPT(cfg).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for idx, tgt in _pattern_batches(cfg.vocab_size, 16, cfg.seq_len, steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _one_step(mode: str, fused_loss: bool, dtype: torch.dtype, autocast: bool):
    """Loss and every parameter gradient of the convergence model's first step."""
    ops.set_kernel_mode(mode)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, seq_len=128, d_model=128, n_layers=4, n_heads=4, fused_loss=fused_loss)
    model = GPT(cfg).to(DEV, dtype)
    idx, tgt = next(_pattern_batches(cfg.vocab_size, 16, cfg.seq_len, 1))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = model(idx, tgt)
    loss.backward()
    return loss.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


def test_gpt_step_gradients_are_as_accurate_as_the_reference():
    """One step is not chaotic: every gradient of the fused run (all kernels, fused loss, bf16
    autocast) is within twice the reference run's own bf16 error against a float64 run."""
    loss_x, exact = _one_step("reference", False, torch.float64, autocast=False)
    loss_r, grads_r = _one_step("reference", False, torch.float32, autocast=True)
    loss_f, grads_f = _one_step("fused", True, torch.float32, autocast=True)
    ops.set_kernel_mode("fused")
    assert abs(loss_f - loss_x) <= 2 * abs(loss_r - loss_x) + 1e-3 * abs(loss_x)
    for name, e in exact.items():
        err_f = ((grads_f[name] - e).norm() / e.norm()).item()
        err_r = ((grads_r[name] - e).norm() / e.norm()).item()
        assert err_f <= 2 * err_r + 1e-4, f"{name}: fused relative error {err_f:.3g} vs reference {err_r:.3g}"


def test_gpt_converges_with_kernels_as_without():
    """200 steps end to end: both runs learn the task, and they agree while the curves can.

    Past the first few dozen steps this run (lr 3e-3, loss spikes) is chaotic: multiplying the
    embedding by (1 + 1e-6) moves the reference run's late 20-step means by 2-4x on the CPU
    (bf16 autocast), e.g. 0.032 vs 0.137. So late windows are only required to have learned;
    equivalence is asserted where it is not chaotic: the first window here, and every gradient
    of a step in test_gpt_step_gradients_are_as_accurate_as_the_reference.
    """
    reference_curve = _train("reference", fused_loss=False)
    fused_curve = _train("fused", fused_loss=True)
    ops.set_kernel_mode("fused")
    assert all(math.isfinite(v) for v in fused_curve)
    window = 20
    ref_means = [sum(reference_curve[i : i + window]) / window for i in range(0, 200, window)]
    fused_means = [sum(fused_curve[i : i + window]) / window for i in range(0, 200, window)]
    curves = f"reference {ref_means} vs fused {fused_means}"
    assert abs(fused_means[0] - ref_means[0]) <= 0.05 * ref_means[0], f"the first steps differ: {curves}"
    for name, means in (("reference", ref_means), ("fused", fused_means)):
        # From ln(256) = 5.5 at init; a run that has learned the permutation is far below 0.3.
        assert means[-1] < min(0.3, 0.1 * means[0]), f"the {name} run did not learn: {curves}"
