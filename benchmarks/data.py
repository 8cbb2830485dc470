"""Data pipeline: shard build throughput, and the loader's tokens/s next to what the model consumes.

    python benchmarks/data.py [--num-proc 1,2] [--batches 300] [--bpe] [--json out.json] [--plot out.png]

1. Shard build: the stdlib corpus (this interpreter's standard library) from text to token shards
   through the real TokenDataModule (datasets.map with num_proc, hashing, split, write), into an
   empty cache each time: MB of text per second for each num_proc (byte tokens; --bpe adds one
   BPE build, tokenizer training included).
2. Loader: the real step-indexed DataLoader (train_dataloader() of the data module, attached to a
   real pl.Trainer) at the default shape (8 x 256) and at GPT-2 shapes (16 and 64 x 1024), with 0
   and 2 workers: tokens/s delivered.
3. What the model consumes, measured in the same run: the default model's training step on this
   CPU; for GPT-2-124M, the most any H100/H200 could consume (tokens/s at 100% of the dense bf16
   peak: 989.4 TFLOP/s / flops_per_token), an upper bound no real run reaches.
The loader must deliver at least 20x what the model consumes (so it is never the bottleneck).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    StepClock,
    build_data,
    build_net_and_module,
    compose,
    describe,
    handwritten_train,
    machine,
    markdown_table,
    quiet,
    schedule_factor,
    write_json,
)

H100_BF16_PEAK = 989.4e12  # dense, FLOP/s (the H200's is the same)
GOAL = 20.0


def corpus_megabytes() -> tuple[float, int]:
    """UTF-8 MB of text and number of documents of the stdlib corpus, read once (warms the page cache)."""
    from trainer.data.sources import SourceSpec, load_documents, quiet_datasets, resolve_source

    with tempfile.TemporaryDirectory() as hf, quiet_datasets():
        docs = load_documents(resolve_source(SourceSpec("stdlib")), hf)
        total = sum(len((t or "").encode("utf-8")) for t in docs["text"])
        return total / 1e6, len(docs)


def build_once(num_proc: int, tokenizer: str) -> float:
    """Seconds to build the stdlib shards from scratch (an empty cache, datasets cache included)."""
    from trainer.data import TokenDataModule

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as cache:
        dm = TokenDataModule(path="stdlib", tokenizer=tokenizer, bpe_vocab_size=4096, cache_dir=cache, num_proc=num_proc)
        t0 = time.perf_counter()
        dm.prepare_data()
        seconds = time.perf_counter() - t0
        assert dm.built_shards, "the shards came from a cache: the timing would be meaningless"
        return seconds


def loader_tokens_per_s(seq_len: int, batch_size: int, workers: int, batches: int) -> float:
    """Tokens/s out of the real train loader (step-indexed sampler, memmap windows)."""
    from trainer.data import TokenDataModule

    dm = TokenDataModule(path="stdlib", tokenizer="byte", seq_len=seq_len, batch_size=batch_size, num_workers=workers,
                         cache_dir=str(Path(compose([]).data.cache_dir)))
    dm.prepare_data()
    dm.setup("fit")
    return train_loader_tokens_per_s(dm, batches)


def train_loader_tokens_per_s(dm, batches: int) -> float:
    """Tokens/s out of a data module's train loader, attached to a real pl.Trainer for `batches` steps."""
    import pytorch_lightning as pl

    dm.trainer = pl.Trainer(max_steps=batches, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False)
    it = iter(dm.train_dataloader())
    for _ in range(min(10, batches // 10)):  # workers started, first batches out
        next(it)
    n, t0 = 0, time.perf_counter()
    for x, y in it:
        n += x.numel()
    return n / (time.perf_counter() - t0)


def model_tokens_per_s(steps: int = 8, warmup: int = 3) -> tuple[float, dict]:
    """Tokens/s the default experiment's model trains at on this CPU (hand-written loop, default threads)."""
    import torch

    cfg = compose(["trainer.accelerator=cpu"])
    dm = build_data(cfg)
    net, module = build_net_and_module(cfg, dm)
    clock = StepClock(warmup=warmup, total=warmup + steps)
    o = cfg.optim
    handwritten_train(net, train_tokens=dm.windows("train").tokens(), batch_size=cfg.data.batch_size,
                      seq_len=cfg.model.seq_len, steps=clock.total, device="cpu", bf16=False, lr=o.lr,
                      lr_factor=schedule_factor(cfg), weight_decay=o.weight_decay, betas=o.betas, eps=o.eps,
                      grad_clip=cfg.trainer.gradient_clip_val, clock=clock)
    step = statistics.median(clock.wall)
    return cfg.data.batch_size * cfg.model.seq_len / step, {"threads": torch.get_num_threads(), "step_s": step}


def gpt2_peak_tokens_per_s() -> tuple[float, float]:
    import torch
    from hydra.utils import instantiate

    cfg = compose(["experiment=gpt2_124m", "model.vocab_size=50304", "data.path=stdlib", "data.tokenizer=byte"])
    with torch.device("meta"):
        net = instantiate(cfg.model)
    fpt = float(net.flops_per_token())
    return H100_BF16_PEAK / fpt, fpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-proc", default="1,2", help="comma-separated num_proc values for the shard build")
    ap.add_argument("--batches", type=int, default=300, help="batches read per loader measurement")
    ap.add_argument("--bpe", action="store_true", help="also time one BPE build (tokenizer training included)")
    ap.add_argument("--workers", default="0,2", help="comma-separated loader worker counts")
    ap.add_argument("--loader-only", action="store_true", help="skip the shard builds and the CPU model (GPU machines)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    quiet()
    import torch

    info = machine()

    mb, n_docs = corpus_megabytes() if not args.loader_only else (float("nan"), 0)
    builds = []
    for n in (int(x) for x in args.num_proc.split(",") if not args.loader_only):
        s = build_once(n, "byte")
        builds.append({"tokenizer": "byte", "num_proc": n, "seconds": s, "mb_per_s": mb / s})
        print(f"shard build, byte, num_proc={n}: {s:.2f} s, {mb / s:.2f} MB/s", flush=True)
    if args.bpe and not args.loader_only:
        n = max(int(x) for x in args.num_proc.split(","))
        s = build_once(n, "bpe")
        builds.append({"tokenizer": "bpe (4096, training included)", "num_proc": n, "seconds": s, "mb_per_s": mb / s})
        print(f"shard build, bpe, num_proc={n}: {s:.2f} s, {mb / s:.2f} MB/s", flush=True)

    cpu_model_tps, cpu_model = model_tokens_per_s() if not args.loader_only else (float("nan"), {})
    gpt2_bound, gpt2_fpt = gpt2_peak_tokens_per_s()
    print(f"default model on this CPU consumes {cpu_model_tps:,.0f} tokens/s; GPT-2-124M at 100% of an H100's "
          f"bf16 peak would consume {gpt2_bound:,.0f} tokens/s", flush=True)
    shapes = [("default", 256, 8, cpu_model_tps, "default model, this CPU (measured)"),
              ("gpt2", 1024, 16, gpt2_bound, "GPT-2-124M at 100% MFU on an H100 (bound)"),
              ("gpt2", 1024, 64, gpt2_bound, "GPT-2-124M at 100% MFU on an H100 (bound)")]
    loaders = []
    for name, T, B, consume, what in shapes:
        if args.loader_only and name == "default":
            continue
        for workers in (int(w) for w in args.workers.split(",")):
            tps = loader_tokens_per_s(T, B, workers, args.batches)
            loaders.append({"shape": name, "seq_len": T, "batch_size": B, "workers": workers, "tokens_per_s": tps,
                            "model_tokens_per_s": consume, "model": what, "ratio": tps / consume})
            print(f"loader {B}x{T}, {workers} workers: {tps:,.0f} tokens/s = {tps / consume:,.1f}x {what}", flush=True)

    summary = {"machine": info, "corpus_mb": mb, "documents": n_docs, "builds": builds, "loaders": loaders,
               "cpu_model": {"tokens_per_s": cpu_model_tps, **cpu_model},
               "gpt2_flops_per_token": gpt2_fpt, "gpt2_tokens_per_s_at_h100_peak": gpt2_bound,
               "goal_ratio": GOAL, "goal_met": all(r["ratio"] >= GOAL for r in loaders if r["workers"] == 0),
               "pin_memory": torch.cuda.is_available()}
    print(f"\n{describe(info)}; corpus {mb:.1f} MB of text, {n_docs} documents")
    print(markdown_table(["tokenizer", "num_proc", "build (s)", "MB of text / s"],
                         [[b["tokenizer"], b["num_proc"], f"{b['seconds']:.2f}", f"{b['mb_per_s']:.2f}"] for b in builds]))
    print()
    print(markdown_table(["batch x seq", "workers", "loader tokens/s", "model consumes (tokens/s)", "loader / model"],
                         [[f"{r['batch_size']} x {r['seq_len']}", r["workers"], f"{r['tokens_per_s']:,.0f}",
                           f"{r['model_tokens_per_s']:,.0f} ({r['model']})", f"{r['ratio']:,.1f}x"] for r in loaders]))
    print(f"goal: loader >= {GOAL:.0f}x the model's consumption with the default 0 workers: "
          f"{'met' if summary['goal_met'] else 'MISSED'}")
    write_json(args.json, summary)
    if args.plot:
        _plot(summary, args.plot)


def _plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["loaders"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = [f"{r['batch_size']}x{r['seq_len']}\n{r['workers']} workers" for r in rows]
    ax.bar(range(len(rows)), [r["tokens_per_s"] for r in rows], color="#6a8fd0", label="loader delivers")
    ax.scatter(range(len(rows)), [r["model_tokens_per_s"] for r in rows], color="#d0762a", marker="_", s=900,
               linewidths=3, label="model consumes (GPT-2: 100% MFU H100 bound)", zorder=3)
    ax.scatter(range(len(rows)), [GOAL * r["model_tokens_per_s"] for r in rows], color="k", marker="_", s=900,
               linewidths=1, label=f"{GOAL:.0f}x consumption (goal)", zorder=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("tokens/s (log)")
    m = summary["machine"]
    ax.set_title(f"loader throughput vs model consumption\n{m['cpu']} ({m['cpu_cores']} cores), {m['date']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
