"""GPT-2-124M and ~1.1B MFU on one GPU: the hand-written loop with torch.compile (the strong baseline)
against our trainer in named configurations, each row run in its own process, in priority order,
within one time budget.

    python benchmarks/mfu.py [--budget-s 170] [--variants handwritten,ours_reference,...|all]
                             [--batch auto|N] [--steps 30] [--warmup 5] [--out gpu_out/bench]
    python benchmarks/mfu.py --list                  # the rows, in priority order, and why each exists
    python benchmarks/mfu.py --device cpu --smoke    # every row on a tiny model on the CPU (checks the script)

Every row says what actually ran: each op's route (fused kernel or PyTorch reference, from
trainer.ops.kernel_status() in the process that trained), torch.compile and its mode, the
micro-batch, the precision, the attention backends allowed, the strategy. "vs hand-written" is
given only for rows of the same benchmark run as the baseline with the same model, micro-batch,
precision and compile mode (tokens/s ratio); the other rows report MFU alone. A benchmark run is
one invocation, or several `--append` invocations given one `--bench-run` id (scripts/gpu_bench.sh
runs its rows that way: one machine, minutes apart, interleaved with other benchmarks). Each row
runs in its own process either way, so "same run" never means "same process".

GPT-2-124M: the gpt2_124m experiment's shape (12 x 768, 12 heads, SwiGLU 2048, seq 1024, tied
embeddings) with vocab 50304, bf16-mixed. Data: this interpreter's stdlib as byte tokens through
the real data module (content does not change the speed); the hand-written loop reads the same
token file nanoGPT-style. Micro-batch "auto": the largest of 64/32/16/8 whose eager step fits,
found once by the baseline and used by every row that does not name its own.

Per row: compile + first step (s), tokens/s and step time over the timed steps (a synchronised
window), MFU = tokens/s * model.flops_per_token() / dense bf16 peak, peak memory. Writes mfu.json
(raw: every row's step times and configuration) and mfu_table.md to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    StepClock,
    bf16_peak_tflops,
    build_data,
    build_net_and_module,
    clock_callback,
    compose,
    describe,
    handwritten_train,
    machine,
    markdown_table,
    quiet,
    run_ours,
    schedule_factor,
    write_json,
)

BATCH_CANDIDATES = (64, 32, 16, 8)
GPT2 = ["experiment=gpt2_124m", "strategy=single", "trainer.devices=1", "trainer.accumulate_grad_batches=1",
        "data.path=stdlib", "data.tokenizer=byte", "model.vocab_size=50304", "trainer.compile=true"]
GPT_1B = ["experiment=gpt_1b", "trainer.devices=1", "trainer.num_nodes=1", "trainer.accumulate_grad_batches=1",
          "data.path=stdlib", "data.tokenizer=byte", "model.vocab_size=32768"]
SMOKE = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32", "model.mlp_hidden=64",
         "model.vocab_size=256", "trainer.accelerator=cpu", "trainer.compile=false", "trainer.num_threads=1",
         "data.num_workers=0"]


@dataclass(frozen=True)
class Row:
    """One configuration. kind: handwritten (the nanoGPT loop) or ours (the real fit path)."""

    name: str
    kind: str
    why: str
    overrides: tuple[str, ...] = ()  # config overrides on top of the model's (ours; the hand-written loop
    # takes compile_mode from them)
    model: str = "gpt2"  # gpt2 | 1b
    batch: int | None = None  # None: the baseline's micro-batch
    attention: str | None = None  # "cudnn": only cuDNN's SDPA kernel allowed (torch.backends.cuda flags)
    cost_s: int = 40  # rough cost on an H100/H200 host, compile included: rows that cannot finish are skipped


# Priority order: the framework's cost first (same ops as the baseline), then the default, then MFU variants.
ROWS = [
    Row("handwritten", "handwritten", "the strong baseline: nanoGPT's loop, torch.compile, fused AdamW, reference ops",
        cost_s=60),
    Row("ours_reference", "ours", "ours with the baseline's ops (kernels=reference): what the framework itself costs",
        ("kernels=reference",), cost_s=35),
    Row("ours_auto", "ours", "the default (kernels=auto): the per-op choice the shipped table makes on this GPU",
        ("kernels=auto",)),
    Row("ours_fused", "ours", "every fused kernel (kernels=fused)", ("kernels=fused",)),
    Row("1b_single", "ours", "~1.1B on one GPU, the fastest one-GPU setup: no sharding, torch.compile, kernels=auto",
        ("strategy=single", "trainer.compile=true", "kernels=auto"), model="1b", cost_s=110),
    Row("ours_reference_mb128", "ours", "a larger micro-batch: fewer, longer kernels (MFU vs memory)",
        ("kernels=reference",), batch=128, cost_s=50),
    Row("ours_reference_fused_loss", "ours", "the chunked linear cross-entropy (no logits held) under compile",
        ("kernels=reference", "model.fused_loss=true"), cost_s=50),
    Row("ours_reference_cudnn_attention", "ours", "cuDNN's attention kernel (SDPA) instead of flash-attention 2",
        ("kernels=reference",), attention="cudnn"),
    Row("ours_reference_cudagraphs", "ours", "torch.compile mode reduce-overhead: the step replayed as CUDA graphs",
        ("kernels=reference", "trainer.compile_mode=reduce-overhead"), cost_s=50),
    Row("zero2_1b", "ours", "~1.1B with DeepSpeed ZeRO-2 on one GPU (the earlier measurement's configuration)",
        ("strategy=deepspeed_zero2", "kernels=auto"), model="1b", cost_s=70),
    Row("ours_reference_mb32", "ours", "a smaller micro-batch", ("kernels=reference",), batch=32),
    Row("ours_reference_max_autotune", "ours", "torch.compile mode max-autotune-no-cudagraphs (Triton matmul "
        "autotuning; minutes of compilation)", ("kernels=reference", "trainer.compile_mode=max-autotune-no-cudagraphs"),
        cost_s=300),
]
BY_NAME = {r.name: r for r in ROWS}
ALIASES = {"ours": "ours_auto"}  # the name this row had before the rows were split by kernel mode


# --------------------------------------------------------------------------- one row (child process)
def row_overrides(row: Row, args, batch: int, workdir: Path) -> list[str]:
    steps = (2 + args.zero_steps) if row.model == "1b" else args.warmup + args.steps
    base = GPT2 if row.model == "gpt2" else GPT_1B
    o = [*base, *row.overrides, f"data.batch_size={batch}", f"trainer.max_steps={steps}",
         f"data.num_workers={_loader_workers(4)}", "checkpoint.save_final=false", f"run.dir={workdir}/{row.name}"]
    if args.smoke:  # tiny and eager on a CPU: a compile mode needs compile
        o = [x for x in o if not x.startswith("trainer.compile_mode=")] + SMOKE
    return o + args.overrides


def configuration(cfg, row: Row, compiled: bool) -> dict:
    """What ran, for the row's label: read back from the composed config, not from the row's name."""
    from trainer.build import resolve_device

    t = cfg.trainer
    return {
        "model": row.model, "micro_batch": int(cfg.data.batch_size), "seq_len": int(cfg.model.seq_len),
        "precision": resolve_device(t).precision,
        "compile": compiled, "compile_mode": str(t.compile_mode) if compiled else None,
        "strategy": str(cfg.strategy.name) + (f" ZeRO-{cfg.strategy.zero_stage}" if cfg.strategy.name == "deepspeed" else ""),
        "fused_loss": bool(cfg.model.get("fused_loss", False)), "attention": _attention_backends(),
    }


def run_row(row: Row, args, workdir: Path) -> dict:
    from trainer import ops

    cuda = args.device == "cuda"
    _set_attention(row.attention, cuda)
    batch = int(args.batch) if args.batch != "auto" else 4
    if row.kind == "handwritten":
        return run_handwritten(row, args, workdir)
    total = (2 + args.zero_steps) if row.model == "1b" else args.warmup + args.steps
    clock = StepClock(warmup=2 if row.model == "1b" else args.warmup, total=total, cuda=cuda)
    overrides = row_overrides(row, args, batch, workdir)
    code = run_ours(overrides, [clock_callback(clock)])
    if code:
        raise RuntimeError(f"our trainer exited with code {code}")
    cfg = compose(overrides)
    status = ops.kernel_status()
    return {**clock.summary(), "batch_size": batch, "seq_len": cfg.model.seq_len, "flops_per_token": _flops_per_token(cfg),
            "config": configuration(cfg, row, bool(cfg.trainer.compile)), "kernels": status,
            "kernel_routes": _routes(status, args.device)}


def run_handwritten(row: Row, args, workdir: Path) -> dict:
    import torch

    from trainer import ops

    cuda = args.device == "cuda"
    cfg = compose(row_overrides(row, args, 1, workdir))
    if not cuda:
        torch.set_num_threads(cfg.trainer.num_threads or torch.get_num_threads())  # as run_fit does on a CPU
    dm = build_data(cfg)
    tokens = dm.windows("train").tokens()
    batch = args.batch if args.batch != "auto" else largest_batch(cfg, dm, tokens) if cuda else 4
    batch = int(batch)
    net, module = build_net_and_module(cfg, dm)
    flops_per_token = net.flops_per_token()
    clock = StepClock(warmup=args.warmup, total=args.warmup + args.steps, cuda=cuda)
    o = cfg.optim
    compiled = cuda and not args.smoke
    loss = handwritten_train(
        net, train_tokens=tokens, batch_size=batch, seq_len=cfg.model.seq_len, steps=clock.total, device=args.device,
        bf16=True, lr=o.lr, lr_factor=schedule_factor(cfg), weight_decay=o.weight_decay, betas=o.betas, eps=o.eps,
        grad_clip=cfg.trainer.gradient_clip_val, clock=clock, compile=compiled, compile_mode=cfg.trainer.compile_mode,
        log_every=cfg.trainer.log_every_steps,
    )
    del net, module
    if cuda:
        torch.cuda.empty_cache()
    status = ops.kernel_status()  # this process never set a mode: the reference ops
    config = configuration(cfg, row, compiled) | {"micro_batch": batch, "strategy": "none (one process, fused AdamW)",
                                                   "precision": "bf16-mixed" if cuda else "32-true"}
    return {**clock.summary(), "batch_size": batch, "seq_len": cfg.model.seq_len, "flops_per_token": flops_per_token,
            "last_loss": loss, "compile": compiled, "config": config, "kernels": status,
            "kernel_routes": _routes(status, args.device)}


def largest_batch(cfg, dm, tokens) -> int:
    """The largest candidate micro-batch whose eager bf16 training step fits in GPU memory."""
    import numpy as np
    import torch

    for batch in BATCH_CANDIDATES:
        net = optimizer = loss = None
        try:
            net, _ = build_net_and_module(cfg, dm)
            net = net.cuda()
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
            T = cfg.model.seq_len
            w = torch.from_numpy(np.stack([tokens[i : i + T + 1] for i in range(batch)]).astype(np.int64)).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = net(w[:, :-1], w[:, 1:])
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            print(f"micro-batch {batch}: fits ({torch.cuda.max_memory_allocated() / 2**30:.1f} GiB eager)", flush=True)
            return batch
        except torch.OutOfMemoryError:
            print(f"micro-batch {batch}: out of memory", flush=True)
        finally:
            del net, optimizer, loss
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    raise RuntimeError(f"not even micro-batch {BATCH_CANDIDATES[-1]} fits")


def one_b_batches(device: str) -> tuple[int, ...]:
    """Micro-batches to try for the 1.1B rows, largest first: 8 sequences of 2048 need ~60 GiB."""
    import torch

    if device != "cuda":
        return (2,)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return (8, 4) if total > 100 else (4, 2)


def _routes(status: dict, device: str) -> dict[str, str]:
    """op -> fused | reference, on the device the row trained on."""
    where = "cuda" if device == "cuda" else "cpu"
    return {op: info[where] for op, info in status.get("ops", {}).items()}


def _set_attention(which: str | None, cuda: bool) -> None:
    if which is None or not cuda:
        return
    import torch

    if which != "cudnn":
        raise ValueError(f"unknown attention setting {which!r}")
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(True)


def _attention_backends() -> str:
    import torch

    b = torch.backends.cuda
    allowed = [name for name, on in (("flash", b.flash_sdp_enabled()), ("mem_efficient", b.mem_efficient_sdp_enabled()),
                                     ("cudnn", b.cudnn_sdp_enabled()), ("math", b.math_sdp_enabled())) if on]
    return "SDPA: " + ", ".join(allowed)


def _flops_per_token(cfg) -> float:
    """FLOPs per token of the configured model, from GPT.flops_per_token() on a meta-device copy."""
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        net = instantiate(cfg.model)
    return float(net.flops_per_token())


def _loader_workers(wanted: int) -> int:
    """The experiment's loader workers, or none where /dev/shm is too small for them
    (the preflight check would stop the run)."""
    from trainer.distributed.preflight import required_shm_bytes, shm_bytes

    have = shm_bytes()
    return wanted if have is not None and have >= required_shm_bytes(1, wanted) else 0


def child(args) -> None:
    quiet()
    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp:
        t0 = time.perf_counter()
        res = run_row(BY_NAME[args.variant], args, Path(tmp))
        res["process_s"] = time.perf_counter() - t0
    write_json(args.json, res)


# --------------------------------------------------------------------------- the orchestrator
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="handwritten,ours_reference,ours_auto,ours_fused",
                    help="rows to run, in this order (names from --list, or 'all')")
    ap.add_argument("--list", action="store_true", help="print the rows in priority order and exit")
    ap.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget for all rows together")
    ap.add_argument("--batch", default="auto", help="micro-batch, or auto: the largest of 64/32/16/8 that fits")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per GPT-2 row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation included)")
    ap.add_argument("--zero-steps", type=int, default=6, help="timed steps of the 1.1B rows")
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model, no compile: checks the script on a CPU")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out") + "/bench")
    ap.add_argument("--append", action="store_true", help="add to the results already in --out/mfu.json")
    ap.add_argument("--bench-run", default=os.environ.get("BENCH_RUN_ID"),
                    help="the benchmark run's id, stamped on every row (default $BENCH_RUN_ID, else a new one "
                         "per invocation): ratios are given only between rows with the same id")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every row")
    args = ap.parse_args()
    if args.list:
        for r in ROWS:
            print(f"{r.name:32s} ~{r.cost_s:3d} s  {r.why}")
        return
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.variant:
        return child(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bench_run = args.bench_run or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    info = machine()
    peak = bf16_peak_tflops(info["gpu"]) if info["gpu"] else None
    previous = out / "mfu.json"
    results: dict[str, dict] = json.loads(previous.read_text())["variants"] if args.append and previous.exists() else {}
    batch = args.batch if args.batch != "auto" else results.get("handwritten", {}).get("batch_size", "auto")
    names = [r.name for r in ROWS] if args.variants == "all" else [ALIASES.get(v, v) for v in args.variants.split(",") if v]
    for name in names:
        if name not in BY_NAME:
            raise SystemExit(f"unknown row {name!r}; choose from {', '.join(BY_NAME)} (or all)")
        row = BY_NAME[name]
        left = args.budget_s - (time.monotonic() - started)
        if left < (5 if args.smoke else row.cost_s):
            results[name] = {"status": f"skipped: {left:.0f} s of the budget left, needs ~{row.cost_s} s",
                             "row": asdict(row)}
            print(f"{name}: {results[name]['status']}", flush=True)
            continue
        if row.model == "1b":
            res = _run_1b(args, row, started, out)
        else:
            row_batch = row.batch or (batch if batch != "auto" or args.smoke else 16)  # no baseline: 16
            res = _run_child(args, name, row_batch, left, out)
        res["row"] = asdict(row)
        res["bench_run"] = bench_run
        results[name] = res
        if name == "handwritten" and "batch_size" in res:
            batch = res["batch_size"]
        print(f"{name}: {_one_line(res, peak)}", flush=True)

    summary = {"machine": info, "peak_bf16_tflops": peak, "budget_s": args.budget_s, "variants": results,
               "ratios_vs_handwritten": _ratios(results)}
    write_json(out / "mfu.json", summary)
    table = _table(results, peak, info)
    (out / "mfu_table.md").write_text(table + "\n")
    print("\n" + table)


def _run_1b(args, row: Row, started: float, out: Path) -> dict:
    """One process per try: after an out-of-memory, start clean with half the micro-batch."""
    tries = []
    for batch in one_b_batches(args.device):
        left = args.budget_s - (time.monotonic() - started)
        if left < (5 if args.smoke else row.cost_s):
            break
        res = _run_child(args, row.name, batch, left, out)
        if res["status"] == "ok" or not res.get("out_of_memory"):
            return {**res, "oom_tries": tries}
        tries.append(batch)
    return {"status": f"skipped or out of memory at micro-batch {tries} within the budget", "oom_tries": tries}


def _run_child(args, name: str, batch, left: float, out: Path) -> dict:
    result_path = out / f"mfu_{name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--variant", name, "--json", str(result_path), "--batch", str(batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--zero-steps", str(args.zero_steps),
           "--device", args.device, *(["--smoke"] if args.smoke else []), *args.overrides]
    log = out / f"mfu_{name}.log"
    t0 = time.monotonic()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, left - 3))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    wall = time.monotonic() - t0
    if code == 0 and result_path.exists():
        return {"status": "ok", "process_wall_s": wall, **json.loads(result_path.read_text())}
    text = log.read_text(errors="replace") if log.exists() else ""
    return {"status": f"failed ({code}) after {wall:.0f} s; see {log.name}", "log_tail": text.strip().splitlines()[-12:],
            "out_of_memory": "out of memory" in text.lower()}


def _tokens_per_s(r: dict) -> float | None:
    if r.get("status") != "ok":
        return None
    return r["batch_size"] * r["seq_len"] / r["mean_step_s"]


def comparable(r: dict, base: dict) -> bool:
    """Same benchmark run, model, micro-batch, precision, compile mode and attention backends as the
    baseline: the rows whose tokens/s ratio to it means something (the kernels may differ: the label
    says which)."""
    if r.get("status") != "ok" or base.get("status") != "ok":
        return False
    if r.get("bench_run") is None or r.get("bench_run") != base.get("bench_run"):
        return False
    keys = ("model", "micro_batch", "seq_len", "precision", "compile", "compile_mode", "fused_loss", "attention")
    return all(r["config"].get(k) == base["config"].get(k) for k in keys)


def _ratios(results: dict) -> dict:
    base = results.get("handwritten", {})
    b = _tokens_per_s(base)
    return {n: _tokens_per_s(r) / b for n, r in results.items()
            if n != "handwritten" and b and _tokens_per_s(r) and comparable(r, base)}


def _one_line(r: dict, peak: float | None) -> str:
    tps = _tokens_per_s(r)
    if tps is None:
        return r.get("status", "?")
    mfu = f", MFU {100 * tps * r['flops_per_token'] / (peak * 1e12):.1f}%" if peak else ""
    return (f"batch {r['batch_size']}, {tps:,.0f} tokens/s{mfu}, step {1e3 * r['mean_step_s']:.1f} ms, "
            f"compile+first step {r['first_step_s']:.1f} s, peak {r.get('peak_mem_gib') or 0:.1f} GiB")


SHORT_OPS = {"rms_norm": "norm", "apply_rotary": "rope", "swiglu": "swiglu", "cross_entropy": "ce",
             "fused_linear_cross_entropy": "linear-ce"}


def describe_row(r: dict) -> str:
    """The configuration that ran, in words: kernels per op, compile, micro-batch, precision, the rest."""
    c = r.get("config") or {}
    routes = r.get("kernel_routes") or {}
    fused = [SHORT_OPS.get(op, op) for op, impl in routes.items() if impl == "fused"]
    kernels = "reference ops" if not fused else ("all fused" if len(fused) == len(routes) else "fused " + "+".join(fused))
    parts = [f"{c.get('model', '?')}", f"mb {c.get('micro_batch', '?')}", str(c.get("precision", "?")),
             f"compile {c.get('compile_mode')}" if c.get("compile") else "eager", kernels, str(c.get("strategy", ""))]
    if c.get("fused_loss"):
        parts.append("fused_loss")
    if c.get("attention") and "flash" not in c["attention"]:
        parts.append(c["attention"])
    return ", ".join(p for p in parts if p)


def _table(results: dict, peak: float | None, info: dict) -> str:
    base = results.get("handwritten", {})
    b = _tokens_per_s(base)
    rows = []
    for name, r in results.items():
        tps = _tokens_per_s(r)
        if tps is None:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", r.get("status", "not yet measured")])
            continue
        mfu = f"{100 * tps * r['flops_per_token'] / (peak * 1e12):.1f}%" if peak else "n/a (unknown peak)"
        ratio = f"{tps / b:.3f}" if name != "handwritten" and b and comparable(r, base) else "-"
        rows.append([name, describe_row(r), f"{tps:,.0f}", mfu, ratio, f"{1e3 * r['mean_step_s']:.1f}",
                     f"{r['first_step_s']:.1f}", f"{r.get('peak_mem_gib') or 0:.1f}", "ok"])
    head = f"{describe(info)}; dense bf16 peak {peak} TFLOP/s\n\n"
    return head + markdown_table(["row", "configuration that ran", "tokens/s", "MFU", "tokens/s vs hand-written (same benchmark run)",
                                  "step (ms)", "compile + first step (s)", "peak mem (GiB)", "status"], rows)


if __name__ == "__main__":
    main()
