"""Benchmark the fused kernels against eager PyTorch and torch.compile of the references.

For each op at LLM shapes: forward and forward+backward time (CUDA events, median over
rotated input sets after warm-up; the forward is the training forward, inputs requiring
grad), the bytes each pass must move at minimum, the achieved GB/s and its fraction of a
device-to-device copy measured in this run, speedups against eager and compiled references,
and for the cross-entropy variants the peak memory of fused against unfused.

    python benchmarks/kernels.py --out gpu_out [--quick] [--no-compile]
    python benchmarks/kernels.py --smoke --out /tmp/x   # tiny shapes on the CPU paths: checks the script

Prints a table last and writes kernels_bench.json / kernels_bench.md into --out.
Goals: RMSNorm, RoPE, SwiGLU, CE >= 85% of copy bandwidth; no slower than torch.compile;
fused linear CE peak memory <= 1/4 of the unfused loss.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import ops  # noqa: E402
from trainer.ops import fused  # noqa: E402
from trainer.ops import reference as ref  # noqa: E402

DEV = "cuda"
BANDWIDTH_GOAL = 0.85
MEMORY_GOAL = 0.25


@dataclass
class Case:
    op: str
    shape: str
    make_inputs: Callable[[int], list[torch.Tensor]]  # seed -> inputs; those requiring grad get gradients
    fused_fn: Callable
    ref_fn: Callable
    bytes_fwd: int  # minimum bytes a forward must move
    bytes_fwd_bwd: int  # ... a forward plus backward
    bandwidth_bound: bool = True
    measure_memory: bool = False
    grads_in_forward: bool = False  # the fused forward already computes the gradients (linear CE)


@dataclass
class Result:
    op: str
    shape: str
    fwd_ms: dict = field(default_factory=dict)  # impl -> ms
    fwd_bwd_ms: dict = field(default_factory=dict)
    peak_mib: dict = field(default_factory=dict)
    fwd_gbps: float | None = None
    fwd_bwd_gbps: float | None = None
    fwd_copy_frac: float | None = None
    fwd_bwd_copy_frac: float | None = None
    grads_in_forward: bool = False
    speedup_eager: float | None = None
    speedup_compile: float | None = None
    error: str | None = None


def _randn(shape, dtype, seed, scale=1.0, grad=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = (scale * torch.randn(shape, device=DEV, generator=g, dtype=torch.float32)).to(dtype)
    return t.requires_grad_(grad)


def _targets(n, vocab, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    t = torch.randint(0, vocab, (n,), device=DEV, generator=g)
    t[::17] = -100
    return t


def build_cases(size: str) -> list[Case]:
    """size: "full" (the LLM shapes), "quick" (smaller), "smoke" (tiny, for a CPU run of the script)."""
    quick, smoke = size == "quick", size == "smoke"
    bf16 = torch.bfloat16
    s = 2  # bytes per bf16 element
    n_tok = 64 if smoke else 8192 if quick else 16384
    cases = []

    d = 96 if smoke else 4096
    cases.append(Case(
        "rms_norm", f"{n_tok}x{d} bf16",
        lambda seed: [_randn((n_tok, d), bf16, seed), _randn((d,), bf16, seed + 1, 0.1).detach().add_(1).requires_grad_()],
        lambda x, w: fused.rms_norm(x, w), lambda x, w: ref.rms_norm(x, w),
        bytes_fwd=2 * n_tok * d * s, bytes_fwd_bwd=5 * n_tok * d * s,
    ))

    b, t, nh, nkv, hs = (2, n_tok // 2, 4, 2, 16) if smoke else (2, n_tok // 2, 32, 8, 128)
    cos_sin = {}

    def rope_inputs(seed):
        if not cos_sin:
            inv = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=torch.float32, device=DEV) / hs))
            ang = torch.outer(torch.arange(t, dtype=torch.float32, device=DEV), inv)
            cos_sin["cos"], cos_sin["sin"] = ang.cos(), ang.sin()
        return [_randn((b, nh, t, hs), bf16, seed), _randn((b, nkv, t, hs), bf16, seed + 1)]

    elems = b * (nh + nkv) * t * hs
    cases.append(Case(
        "rope", f"q {b}x{nh}x{t}x{hs}, k {nkv} heads bf16", rope_inputs,
        lambda q, k: fused.apply_rotary(q, k, cos_sin["cos"], cos_sin["sin"]),
        lambda q, k: ref.apply_rotary(q, k, cos_sin["cos"], cos_sin["sin"]),
        bytes_fwd=2 * elems * s, bytes_fwd_bwd=4 * elems * s,
    ))

    h = 160 if smoke else 11008 if quick else 14336
    n_mlp = 64 if smoke else 8192
    cases.append(Case(
        "swiglu", f"{n_mlp}x{h} bf16",
        lambda seed: [_randn((n_mlp, h), bf16, seed, 3.0), _randn((n_mlp, h), bf16, seed + 1)],
        fused.swiglu, ref.swiglu,
        bytes_fwd=3 * n_mlp * h * s, bytes_fwd_bwd=8 * n_mlp * h * s,
    ))

    ce_shapes = [(64, 1000)] if smoke else [(8192, 128256)] if quick else [(16384, 32000), (8192, 128256)]
    for n_ce, vocab in ce_shapes:
        cases.append(Case(
            "cross_entropy", f"{n_ce}x{vocab} bf16",
            lambda seed, n_ce=n_ce, vocab=vocab: [_randn((n_ce, vocab), bf16, seed, 4.0), _targets(n_ce, vocab, seed)],
            lambda x, t: fused.cross_entropy(x, t), lambda x, t: ref.cross_entropy(x, t),
            bytes_fwd=n_ce * vocab * s, bytes_fwd_bwd=3 * n_ce * vocab * s, measure_memory=True,
        ))

    n_lce, d_lce, v_lce = (64, 32, 1000) if smoke else (8192, 4096, 128256) if quick else (16384, 4096, 128256)
    cases.append(Case(
        "fused_linear_ce", f"{n_lce}x{d_lce} @ {v_lce}x{d_lce} bf16",
        lambda seed: [_randn((n_lce, d_lce), bf16, seed), _randn((v_lce, d_lce), bf16, seed + 1, d_lce**-0.5),
                      _targets(n_lce, v_lce, seed)],
        lambda h, w, t: fused.fused_linear_cross_entropy(h, w, t),
        lambda h, w, t: ref.fused_linear_cross_entropy(h, w, t),
        bytes_fwd=0, bytes_fwd_bwd=0, bandwidth_bound=False, measure_memory=True, grads_in_forward=True,
    ))
    return cases


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth_gbps(n_bytes: int = 1 << 30) -> float:
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=DEV).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda a, b: b.copy_(a), [[src, dst]], backward=False)
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def time_ms(
    fn: Callable, input_sets: list[list[torch.Tensor]], backward: bool, warmup: int = 3, iters: int = 15
) -> float:
    """Median CUDA-event time of fn over rotated input sets; with backward, forward + backward."""

    def once(args):
        if not backward:
            return fn(*args)
        out = fn(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = [torch.ones_like(o) if o.dim() == 0 else _grad_like(o) for o in outs]
        return torch.autograd.grad(outs, leaves, grads)

    for i in range(warmup):
        once(input_sets[i % len(input_sets)])
    _sync()
    if DEV != "cuda":  # the --smoke run: wall-clock timing of the CPU paths
        times = []
        for i in range(iters):
            start = time.perf_counter()
            once(input_sets[i % len(input_sets)])
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)
    events = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once(input_sets[i % len(input_sets)])
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


_GRADS: dict = {}


def _grad_like(o: torch.Tensor) -> torch.Tensor:
    key = (tuple(o.shape), o.dtype)
    if key not in _GRADS:
        _GRADS[key] = torch.randn(o.shape, device=DEV, dtype=torch.float32).to(o.dtype)
    return _GRADS[key]


def peak_mib(fn: Callable, args: list[torch.Tensor]) -> float | None:
    """Peak memory above what was allocated before, over a forward and backward (CUDA only)."""
    if DEV != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args)
    leaves = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(out, leaves)  # the cross-entropy variants return a scalar
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out, grads
    return peak / 2**20


def run_case(case: Case, copy_gbps: float, compile_ref: bool) -> Result:
    res = Result(case.op, case.shape, grads_in_forward=case.grads_in_forward)
    input_sets = [case.make_inputs(seed) for seed in (0, 100)]  # rotated: no pass sees warm L2
    impls = {"fused": case.fused_fn, "eager": case.ref_fn}
    if compile_ref:
        torch._dynamo.reset()
        impls["compile"] = torch.compile(case.ref_fn, dynamic=False)
    for name, fn in impls.items():
        start = time.monotonic()
        res.fwd_ms[name] = time_ms(fn, input_sets, backward=False)  # the training forward (inputs need grad)
        res.fwd_bwd_ms[name] = time_ms(fn, input_sets, backward=True)
        print(f"  {case.op} {name}: fwd {res.fwd_ms[name]:.3f} ms, fwd+bwd {res.fwd_bwd_ms[name]:.3f} ms "
              f"({time.monotonic() - start:.0f}s incl. compile)", file=sys.stderr, flush=True)
    if case.bandwidth_bound:
        res.fwd_gbps = case.bytes_fwd / (res.fwd_ms["fused"] * 1e-3) / 1e9
        res.fwd_bwd_gbps = case.bytes_fwd_bwd / (res.fwd_bwd_ms["fused"] * 1e-3) / 1e9
        res.fwd_copy_frac = res.fwd_gbps / copy_gbps
        res.fwd_bwd_copy_frac = res.fwd_bwd_gbps / copy_gbps
    res.speedup_eager = res.fwd_bwd_ms["eager"] / res.fwd_bwd_ms["fused"]
    if "compile" in res.fwd_bwd_ms:
        res.speedup_compile = res.fwd_bwd_ms["compile"] / res.fwd_bwd_ms["fused"]
    if case.measure_memory and DEV == "cuda":
        args = input_sets[0]
        res.peak_mib = {"fused": peak_mib(case.fused_fn, args), "unfused": peak_mib(case.ref_fn, args)}
    return res


def _fmt(v, spec=".2f", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def table(results: list[Result], copy_gbps: float) -> str:
    head = ("| op | shape | fwd ms | fwd+bwd ms | fwd GB/s (% copy) | fwd+bwd GB/s (% copy) | x eager | x compile "
            "| peak MiB fused / unfused |")
    lines = [f"copy bandwidth (device to device, this run): {copy_gbps:.0f} GB/s", "", head,
             "|" + "---|" * 9]
    for r in results:
        if r.error:
            lines.append(f"| {r.op} | {r.shape} | error: {r.error} |||||||")
            continue
        peak = (f"{r.peak_mib['fused']:.0f} / {r.peak_mib['unfused']:.0f} ({r.peak_mib['fused'] / r.peak_mib['unfused']:.2f})"
                if r.peak_mib else "-")
        lines.append(
            f"| {r.op} | {r.shape} | {r.fwd_ms['fused']:.3f} | {r.fwd_bwd_ms['fused']:.3f} "
            f"| {_fmt(r.fwd_gbps, '.0f')} ({_fmt(r.fwd_copy_frac and 100 * r.fwd_copy_frac, '.0f', '%')}) "
            f"| {_fmt(r.fwd_bwd_gbps, '.0f')} ({_fmt(r.fwd_bwd_copy_frac and 100 * r.fwd_bwd_copy_frac, '.0f', '%')}) "
            f"| {_fmt(r.speedup_eager)} | {_fmt(r.speedup_compile)} | {peak} |"
        )
    return "\n".join(lines)


def goals(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        if r.error:
            out.append(f"MISS {r.op} {r.shape}: {r.error}")
            continue
        if r.fwd_copy_frac is not None:
            for label, frac in (("fwd", r.fwd_copy_frac), ("fwd+bwd", r.fwd_bwd_copy_frac)):
                ok = frac >= BANDWIDTH_GOAL
                out.append(f"{'PASS' if ok else 'MISS'} {r.op} {r.shape} {label}: {100 * frac:.0f}% of copy bandwidth "
                           f"(goal {100 * BANDWIDTH_GOAL:.0f}%)")
        if r.speedup_compile is not None:
            # A forward that already computes the gradients is only comparable as forward+backward.
            fwd = None if r.grads_in_forward else r.fwd_ms["compile"] / r.fwd_ms["fused"]
            slowest = min(x for x in (fwd, r.speedup_compile) if x is not None)
            out.append(f"{'PASS' if slowest >= 1.0 else 'MISS'} {r.op} {r.shape}: x{slowest:.2f} vs torch.compile "
                       f"({'fwd+bwd' if fwd is None else 'worst of fwd, fwd+bwd'}; goal >= 1)")
        if r.op == "fused_linear_ce" and r.peak_mib:
            ratio = r.peak_mib["fused"] / r.peak_mib["unfused"]
            out.append(f"{'PASS' if ratio <= MEMORY_GOAL else 'MISS'} {r.op}: peak memory {ratio:.2f} of unfused "
                       f"(goal <= {MEMORY_GOAL})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_out"))
    parser.add_argument("--quick", action="store_true", help="smaller shapes, one cross-entropy case")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the C++ CPU paths (checks the script)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--only", nargs="*", help="op names to run (rms_norm rope swiglu cross_entropy fused_linear_ce)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time budget: past 60%% the compile baseline is dropped, past 100%% remaining ops are skipped")
    args = parser.parse_args(argv)
    global DEV
    if args.smoke:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU (or --smoke for a CPU check of the script)", file=sys.stderr)
        return 2
    if ops.set_kernel_mode("fused") != "fused":
        print(f"kernels unavailable: {ops.kernel_status()}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)"
    copy_gbps = copy_bandwidth_gbps(1 << 30 if DEV == "cuda" else 1 << 24)
    print(f"{device}: copy bandwidth {copy_gbps:.0f} GB/s", file=sys.stderr, flush=True)
    results: list[Result] = []
    start = time.monotonic()
    compile_ref = not args.no_compile
    for case in build_cases("smoke" if args.smoke else "quick" if args.quick else "full"):
        if args.only and case.op not in args.only:
            continue
        used = time.monotonic() - start
        if args.budget_s and used > args.budget_s:
            results.append(Result(case.op, case.shape, error=f"skipped: time budget of {args.budget_s:.0f}s used"))
            continue
        if args.budget_s and compile_ref and used > 0.6 * args.budget_s:
            print("  dropping the torch.compile baseline to stay in the time budget", file=sys.stderr, flush=True)
            compile_ref = False
        try:
            results.append(run_case(case, copy_gbps, compile_ref=compile_ref))
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
            results.append(Result(case.op, case.shape, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        _GRADS.clear()
        if DEV == "cuda":
            torch.cuda.empty_cache()
        write_reports(args.out, device, copy_gbps, results)  # after every op: a timeout keeps what was measured
    md, checks = write_reports(args.out, device, copy_gbps, results)
    print(f"\n{device}\n{md}\n")
    print("\n".join(checks))
    return 0


def write_reports(out: Path, device: str, copy_gbps: float, results: list[Result]) -> tuple[str, list[str]]:
    md, checks = table(results, copy_gbps), goals(results)
    report = {"device": device, "copy_gbps": copy_gbps, "results": [asdict(r) for r in results], "goals": checks}
    (out / "kernels_bench.json").write_text(json.dumps(report, indent=2))
    (out / "kernels_bench.md").write_text(
        f"# Kernel benchmark on {device}\n\n{md}\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
    )
    return md, checks


if __name__ == "__main__":
    sys.exit(main())
