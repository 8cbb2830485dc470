"""GPT-2-124M MFU on one GPU: the hand-written loop with torch.compile (the strong baseline)
against our trainer with torch.compile, and with torch.compile + kernels=fused; plus a short
run of the ~1.1B config with DeepSpeed ZeRO-2 on one GPU.

    python benchmarks/mfu.py [--budget-s 170] [--variants handwritten,ours,ours_fused,zero2_1b]
                             [--batch auto|N] [--steps 30] [--warmup 5] [--out gpu_out/bench]

Model: the gpt2_124m experiment's shape (12 x 768, 12 heads, SwiGLU 2048, seq 1024, tied
embeddings) with vocab 50304, bf16-mixed. Data: this interpreter's stdlib as byte tokens
through the real data module (content does not change the speed); the hand-written loop reads
the same token file nanoGPT-style. Micro-batch: the largest of 64/32/16 whose eager step fits
(compiled steps need less memory, so it fits compiled too), found once by the baseline and used
by every variant. Each variant runs in its own process (an OOM or a kernel fault cannot poison
the next) under what is left of --budget-s; one that would not fit is reported as skipped.

Per variant: compile + first step (s), tokens/s and step time over the timed steps (synchronised
window), MFU = tokens/s * model.flops_per_token() / dense bf16 peak, peak memory. Ratios are
against the hand-written baseline of the same run. Writes mfu.json and mfu_table.md to --out.
`--device cpu --smoke` runs every variant on a tiny model on the CPU (no compile) to check the
script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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

VARIANTS = ("handwritten", "ours", "ours_fused", "zero2_1b")
BATCH_CANDIDATES = (64, 32, 16, 8)
GPT2 = ["experiment=gpt2_124m", "strategy=single", "trainer.devices=1", "trainer.accumulate_grad_batches=1",
        "data.path=stdlib", "data.tokenizer=byte", "model.vocab_size=50304"]
GPT_1B = ["experiment=gpt_1b", "strategy=deepspeed_zero2", "trainer.devices=1", "trainer.num_nodes=1",
          "trainer.accumulate_grad_batches=1", "data.path=stdlib", "data.tokenizer=byte", "model.vocab_size=32768"]
SMOKE = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32", "model.mlp_hidden=64",
         "model.vocab_size=256", "trainer.accelerator=cpu", "trainer.compile=false", "trainer.num_threads=1",
         "data.num_workers=0"]
# Rough cost of each variant (s) on an H100 host, to skip one that cannot finish in the budget.
MIN_SECONDS = {"handwritten": 60, "ours": 30, "ours_fused": 45, "zero2_1b": 45}


# --------------------------------------------------------------------------- one variant (child process)
def gpt2_overrides(args, batch: int, workdir: Path, name: str) -> list[str]:
    steps = args.warmup + args.steps
    o = [*GPT2, f"data.batch_size={batch}", f"trainer.max_steps={steps}", f"data.num_workers={_loader_workers(4)}",
         "checkpoint.save_final=false", f"run.dir={workdir}/{name}", "trainer.compile=true"]
    o.append("kernels=fused" if name == "ours_fused" else "kernels=auto")
    return o + (SMOKE if args.smoke else []) + args.overrides


def run_handwritten(args, workdir: Path) -> dict:
    import torch

    cuda = args.device == "cuda"
    cfg = compose(gpt2_overrides(args, 1, workdir, "handwritten"))
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
    loss = handwritten_train(
        net, train_tokens=tokens, batch_size=batch, seq_len=cfg.model.seq_len, steps=clock.total, device=args.device,
        bf16=True, lr=o.lr, lr_factor=schedule_factor(cfg), weight_decay=o.weight_decay, betas=o.betas, eps=o.eps,
        grad_clip=cfg.trainer.gradient_clip_val, clock=clock, compile=cuda and not args.smoke,
        log_every=cfg.trainer.log_every_steps,
    )
    del net, module
    if cuda:
        torch.cuda.empty_cache()
    return {**clock.summary(), "batch_size": batch, "seq_len": cfg.model.seq_len, "flops_per_token": flops_per_token,
            "last_loss": loss, "compile": cuda and not args.smoke}


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


def run_trainer_variant(args, workdir: Path, name: str) -> dict:
    from trainer import ops

    cuda = args.device == "cuda"
    if name == "zero2_1b":
        return run_zero2(args, workdir)
    batch = int(args.batch) if args.batch != "auto" else 4
    clock = StepClock(warmup=args.warmup, total=args.warmup + args.steps, cuda=cuda)
    overrides = gpt2_overrides(args, batch, workdir, name)
    code = run_ours(overrides, [clock_callback(clock)])
    if code:
        raise RuntimeError(f"our trainer exited with code {code}")
    cfg = compose(overrides)
    return {**clock.summary(), "batch_size": batch, "seq_len": cfg.model.seq_len,
            "flops_per_token": _flops_per_token(cfg), "kernels": {"mode": ops.kernel_mode(), **ops.kernel_status()},
            "compile": bool(cfg.trainer.compile)}


def run_zero2(args, workdir: Path) -> dict:
    """The ~1.1B config (22 x 2048, seq 2048), ZeRO-2 on one GPU, at the given micro-batch."""
    cuda = args.device == "cuda"
    batch = int(args.batch)
    clock = StepClock(warmup=2, total=2 + args.zero_steps, cuda=cuda)
    overrides = [*GPT_1B, f"data.batch_size={batch}", f"trainer.max_steps={clock.total}", "checkpoint.save_final=false",
                 f"data.num_workers={_loader_workers(4)}", f"run.dir={workdir}/zero2_1b",
                 *(SMOKE if args.smoke else []), *args.overrides]
    code = run_ours(overrides, [clock_callback(clock)])
    if code:
        raise RuntimeError(f"our trainer exited with code {code}")
    cfg = compose(overrides)
    return {**clock.summary(), "batch_size": batch, "seq_len": cfg.model.seq_len,
            "flops_per_token": _flops_per_token(cfg), "strategy": "deepspeed ZeRO-2, 1 GPU"}


def zero2_batches(device: str) -> tuple[int, ...]:
    """Micro-batches to try for the 1.1B run, largest first: 8 sequences of 2048 need ~60 GiB."""
    import torch

    if device != "cuda":
        return (2,)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return (8, 4) if total > 100 else (4, 2)


def _flops_per_token(cfg) -> float:
    """FLOPs per token of the configured model, from GPT.flops_per_token() on a meta-device copy."""
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        net = instantiate(cfg.model)
    return float(net.flops_per_token())


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        if args.variant == "handwritten":
            res = run_handwritten(args, Path(tmp))
        else:
            res = run_trainer_variant(args, Path(tmp), args.variant)
        res["process_s"] = time.perf_counter() - t0
    write_json(args.json, res)


# --------------------------------------------------------------------------- the orchestrator
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget for all variants together")
    ap.add_argument("--batch", default="auto", help="micro-batch, or auto: the largest of 64/32/16/8 that fits")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation included)")
    ap.add_argument("--zero-steps", type=int, default=6, help="timed steps of the 1.1B ZeRO-2 run")
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model, no compile: checks the script on a CPU")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out") + "/bench")
    ap.add_argument("--append", action="store_true", help="add to the results already in --out/mfu.json")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.variant:
        return child(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    peak = bf16_peak_tflops(info["gpu"]) if info["gpu"] else None
    previous = out / "mfu.json"
    results: dict[str, dict] = json.loads(previous.read_text())["variants"] if args.append and previous.exists() else {}
    batch = args.batch if args.batch != "auto" else results.get("handwritten", {}).get("batch_size", "auto")
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        left = args.budget_s - (time.monotonic() - started)
        if left < (5 if args.smoke else MIN_SECONDS[name]):
            results[name] = {"status": f"skipped: {left:.0f} s of the budget left, needs ~{MIN_SECONDS[name]} s"}
            print(f"{name}: {results[name]['status']}", flush=True)
            continue
        if name != "handwritten" and name != "zero2_1b" and batch == "auto" and not args.smoke:
            batch = 16  # no baseline to take the micro-batch from
        if name == "zero2_1b":
            res = _run_zero2_children(args, started, out)
        else:
            res = _run_child(args, name, batch, left, out)
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


def _run_zero2_children(args, started: float, out: Path) -> dict:
    """One process per try: after an out-of-memory inside DeepSpeed, start clean with half the batch."""
    tries = []
    for batch in zero2_batches(args.device):
        left = args.budget_s - (time.monotonic() - started)
        if left < (5 if args.smoke else MIN_SECONDS["zero2_1b"]):
            break
        res = _run_child(args, "zero2_1b", batch, left, out)
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


def _ratios(results: dict) -> dict:
    base = _tokens_per_s(results.get("handwritten", {}))
    return {n: (_tokens_per_s(r) / base if base and _tokens_per_s(r) else None)
            for n, r in results.items() if n in ("ours", "ours_fused")}


def _one_line(r: dict, peak: float | None) -> str:
    tps = _tokens_per_s(r)
    if tps is None:
        return r.get("status", "?")
    mfu = f", MFU {100 * tps * r['flops_per_token'] / (peak * 1e12):.1f}%" if peak else ""
    return (f"batch {r['batch_size']}, {tps:,.0f} tokens/s{mfu}, step {1e3 * r['mean_step_s']:.1f} ms, "
            f"compile+first step {r['first_step_s']:.1f} s, peak {r.get('peak_mem_gib') or 0:.1f} GiB")


def _table(results: dict, peak: float | None, info: dict) -> str:
    base = _tokens_per_s(results.get("handwritten", {}))
    names = {"handwritten": "hand-written + torch.compile", "ours": "ours + torch.compile",
             "ours_fused": "ours + torch.compile + kernels=fused", "zero2_1b": "~1.1B, ours, DeepSpeed ZeRO-2, 1 GPU"}
    rows = []
    for name, r in results.items():
        tps = _tokens_per_s(r)
        if tps is None:
            rows.append([names.get(name, name), "-", "-", "-", "-", "-", "-", "-", r.get("status", "not yet measured")])
            continue
        mfu = f"{100 * tps * r['flops_per_token'] / (peak * 1e12):.1f}%" if peak else "n/a (unknown peak)"
        ratio = f"{tps / base:.3f}" if base and name in ("ours", "ours_fused") else "-"
        extra = r.get("kernels", {}).get("mode", "") if isinstance(r.get("kernels"), dict) else ""
        rows.append([names.get(name, name), r["batch_size"], f"{tps:,.0f}", mfu, ratio, f"{1e3 * r['mean_step_s']:.1f}",
                     f"{r['first_step_s']:.1f}", f"{r.get('peak_mem_gib') or 0:.1f}", f"ok {extra}".strip()])
    head = (f"{describe(info)}; dense bf16 peak {peak} TFLOP/s\n\n")
    return head + markdown_table(["variant", "micro-batch", "tokens/s", "MFU", "tokens/s vs hand-written", "step (ms)",
                                  "compile + first step (s)", "peak mem (GiB)", "status"], rows)


if __name__ == "__main__":
    main()
