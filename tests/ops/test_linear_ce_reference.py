"""The reference linear cross-entropy (what `kernels=auto` runs for `model.fused_loss=true` wherever
the fused kernel is not chosen): chunk by chunk, it must give the loss and gradients of
cross_entropy(hidden @ weight.T) and keep the op's memory contract (never all logits at once)."""
from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from trainer import ops
from trainer.models.gpt import GPT, GPTConfig
from trainer.ops import reference as ref


def _inputs(n, dim, vocab, dtype=torch.float32, ignore_every=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(dtype).requires_grad_(True)
    t = torch.randint(0, vocab, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, t


def _loss_and_grads(fn, h, w, t, **kw):
    h, w = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    loss = fn(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block and alive at the same time (CPU
    or any device): every op's new output storages are counted until they are freed; views of
    tensors made before the block (the inputs) are not."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.outside: dict[int, StorageWeakRef] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in pytree.tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.live:
                self.outside.setdefault(t.untyped_storage().data_ptr(), StorageWeakRef(t.untyped_storage()))
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.outside = {k: v for k, v in self.outside.items() if not v.expired()}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.outside:
                s = t.untyped_storage()
                self.live.setdefault(s.data_ptr(), (StorageWeakRef(s), s.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


# ---- values and gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("n,dim,vocab", [(1, 8, 11), (37, 13, 123), (600, 16, 257)])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("chunk_rows", [0, 1, 7])  # the rule (1 or 3 chunks here), one row each, a short last chunk
def test_fp32_matches_the_unchunked_loss_and_gradients(n, dim, vocab, z_loss, chunk_rows):
    h, w, t = _inputs(n, dim, vocab, ignore_every=4 if n > 1 else 0)
    got = _loss_and_grads(ref.fused_linear_cross_entropy, h, w, t, z_loss=z_loss, chunk_rows=chunk_rows)
    want = _loss_and_grads(ref.linear_cross_entropy, h, w, t, z_loss=z_loss)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_rule_chunks_large_inputs_and_keeps_small_ones_whole():
    assert ref.linear_cross_entropy_chunk_rows(100, 50) == 100  # small: one chunk
    assert ref.linear_cross_entropy_chunk_rows(2048, 4096) == 256  # 1/8 of the rows
    # gpt_1b (micro-batch 8 x 2048 tokens, vocab 32768): 8 chunks of 256 MiB of fp32 logits
    assert ref.linear_cross_entropy_chunk_rows(16384, 32768) == 2048
    # a large vocabulary: the byte cap decides
    rows = ref.linear_cross_entropy_chunk_rows(65536, 128256)
    assert rows * 128256 * 4 <= ref.CHUNK_FP32_LOGITS_BYTES and rows > 0
    assert ref.linear_cross_entropy_chunk_rows(10, 50, requested=3) == 3


def test_gradcheck_in_float64_over_several_chunks():
    h, w, t = _inputs(9, 5, 11, dtype=torch.float64, ignore_every=4)
    assert torch.autograd.gradcheck(
        lambda h, w: ref.fused_linear_cross_entropy(h, w, t, -100, 1e-2, chunk_rows=4), (h, w)
    )


def test_bf16_is_as_accurate_as_the_unchunked_bf16_loss():
    """Errors against float64 truth: the chunked bf16 path may be at most 2x (plus a bf16 ulp of
    slack on a near-zero element) the plain PyTorch bf16 loss's own error, for the loss and both
    gradients. d(weight) is summed over 8 chunks in fp32 after a bf16 product each."""
    h, w, t = _inputs(2048, 32, 512, dtype=torch.bfloat16)
    truth = _loss_and_grads(ref.linear_cross_entropy, h.double(), w.double(), t)
    base = _loss_and_grads(ref.linear_cross_entropy, h, w, t)
    got = _loss_and_grads(ref.fused_linear_cross_entropy, h, w, t)
    assert ref.linear_cross_entropy_chunk_rows(2048, 512) == 256  # so 8 chunks ran
    for name, g, b, x in zip(("loss", "d hidden", "d weight"), got, base, truth):
        assert g.dtype == b.dtype
        err = (g.double() - x).abs().max().item()
        base_err = (b.double() - x).abs().max().item()
        ulp = 2**-8 * x.abs().max().item()
        assert err <= 2 * base_err + ulp, f"{name}: chunked error {err:.3g} vs PyTorch bf16 {base_err:.3g}"


def test_under_autocast_it_rounds_like_lm_head_plus_cross_entropy():
    """fp32 hidden and weight in a bf16 autocast region (the GPT's fused_loss path on a GPU)."""
    h, w, t = _inputs(300, 16, 96)

    def autocast(fn):
        def run(h, w, t, **kw):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(h, w, t, **kw)

        return run

    got = _loss_and_grads(autocast(ref.fused_linear_cross_entropy), h, w, t, chunk_rows=64)
    want = _loss_and_grads(autocast(lambda h, w, t: ref.cross_entropy(torch.nn.functional.linear(h, w), t)), h, w, t)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-4)


def test_without_gradients_it_gives_the_same_loss_and_keeps_no_gradients():
    h, w, t = _inputs(100, 64, 50)
    with torch.no_grad(), PeakMemory() as mem:
        loss = ref.fused_linear_cross_entropy(h, w, t, chunk_rows=10)
    torch.testing.assert_close(loss, ref.linear_cross_entropy(h.detach(), w.detach(), t))
    assert mem.peak < h.numel() * 4, "no d(hidden) buffer (nor d(weight)) when no gradient is wanted"


def test_no_rows_gives_zero_loss_and_zero_gradients():
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    loss = ref.fused_linear_cross_entropy(h, w, torch.empty(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.shape == (0, 8) and torch.count_nonzero(w.grad) == 0


def test_the_gpt_fused_loss_matches_the_unfused_loss_on_the_reference_route():
    ops.set_kernel_mode("reference")
    cfg = dict(vocab_size=300, seq_len=16, d_model=32, n_layers=1, n_heads=2)
    idx = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    losses, grads = [], []
    for fused_loss in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**cfg, fused_loss=fused_loss))
        loss = model(idx, idx.roll(1, 1))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


# ---- memory: never all logits at once ---------------------------------------------------------

N, D, V = 2048, 32, 4096
ALL_LOGITS_FP32 = N * V * 4  # 32 MiB


def _peak(fn) -> int:
    h, w, t = _inputs(N, D, V)
    with PeakMemory() as mem:
        fn(h, w, t).backward()
    return mem.peak


def test_the_memory_tracker_sees_all_logits_of_the_unchunked_loss():
    """Calibration: the tracker would catch a path that materialises the logits."""
    assert _peak(ref.linear_cross_entropy) >= 2 * ALL_LOGITS_FP32


def test_the_reference_route_of_fused_loss_never_holds_all_logits():
    """What a run calls with model.fused_loss=true where auto picks the reference (every CPU, and
    every GPU where the kernel is not measured faster): at most a quarter of all logits' bytes
    (chunk logits, their gradient, d(hidden) and the fp32 d(weight) included)."""
    ops.set_kernel_mode("auto")  # on this machine: the reference
    assert ops.kernel_status()["ops"]["fused_linear_cross_entropy"]["cpu"] == "reference"
    peak = _peak(ops.fused_linear_cross_entropy)
    assert peak <= ALL_LOGITS_FP32 / 4, f"peak {peak / 2**20:.1f} MiB, all logits {ALL_LOGITS_FP32 / 2**20:.0f} MiB"


# ---- torch.compile ------------------------------------------------------------------------------


def test_torch_compile_traces_it_in_one_graph_that_never_holds_all_logits():
    """fullgraph: no graph break in the chunk loop or the autograd.Function; the same loss and
    gradients; and in the graphs AOTAutograd hands the compiler (forward and backward), no tensor
    is larger than one chunk's logits. (A dispatch mode cannot watch compiled code run, so the
    traced graphs are inspected instead of measured.)"""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    compiled = torch.compile(ref.fused_linear_cross_entropy, fullgraph=True, dynamic=False,
                             backend=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    n, vocab, rows = 600, 257, 128
    h, w, t = _inputs(n, 16, vocab)
    got = _loss_and_grads(compiled, h, w, t, chunk_rows=rows)
    want = _loss_and_grads(ref.linear_cross_entropy, h, w, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(graphs) == 2, "one forward and one backward graph"
    sizes = [node.meta["val"].numel() for gm in graphs for node in gm.graph.nodes
             if isinstance(node.meta.get("val"), torch.Tensor)]
    assert max(sizes) == rows * vocab, f"largest traced tensor {max(sizes)} elements; one chunk is {rows * vocab}"
    mms = [node for node in graphs[0].graph.nodes if node.target == torch.ops.aten.mm.default]
    assert len(mms) == 3 * -(-n // rows), "three products per chunk, every chunk traced"
