"""Loader throughput of a 3-source weighted mixture against a single source, same run.

    python benchmarks/data_mixture.py [--tokens 16000000] [--workers 0] [--rounds 3] [--json out.json]

The real step-indexed train loader (TokenDataModule.train_dataloader() attached to a real
pl.Trainer), byte tokens of this interpreter's standard library:
  single source   data.path=stdlib (*.py of the top directory);
  3-source mixture the same files split three ways by name (data.sources with file_glob [a-f]*.py,
                  [g-o]*.py, [p-z_]*.py), weights 0.5 / 0.3 / 0.2: window ids drawn by (seed, step, slot),
                  mapped to a source, read from that source's memory-mapped shard.
Tokens/s delivered, for each shape (workers=0 by default: the loader's own cost, in this process;
the same code runs in worker processes otherwise) (--tokens per measurement, so small batches are
timed over as long as big ones). The two loaders are read in turn, one batch each (the order
alternating), each next() timed: a change in machine load hits both alike. Ratio = mixture / single,
per round, median over rounds; tokens/s at the median batch time is the headline (a preemption by another
process lands inside one sub-millisecond next() and moves a total by more than the difference measured),
tokens/s over the total time is printed beside it. The same measurement of the single source against a second copy of
itself (A/A, ideally 1.000) shows how far the machine's noise moves a ratio.
Goal: >= 0.9.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compose, describe, load_avg, machine, markdown_table, quiet, write_json  # noqa: E402

GOAL = 0.9
MIX = [{"path": "stdlib", "file_glob": "[a-f]*.py", "weight": 0.5},
       {"path": "stdlib", "file_glob": "[g-o]*.py", "weight": 0.3},
       {"path": "stdlib", "file_glob": "[p-z_]*.py", "weight": 0.2}]
SHAPES = ((256, 8), (1024, 16), (1024, 64))


def data_module(mixture: bool, seq_len: int, batch_size: int, workers: int, cache: str):
    from trainer.data import TokenDataModule

    kw = dict(seq_len=seq_len, batch_size=batch_size, num_workers=workers, cache_dir=cache)
    dm = TokenDataModule(path=None, sources=MIX, **kw) if mixture else TokenDataModule(path="stdlib", **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def interleaved_tokens_per_s(single_dm, mix_dm, batches: int) -> tuple[dict, dict]:
    """Tokens/s of each data module's real train loader, read one batch from each in turn: over the total
    time, and at the median batch time (which a preemption by another process on a shared machine, landing
    inside one sub-millisecond next(), cannot move)."""
    import pytorch_lightning as pl

    iterators = []
    for dm in (single_dm, mix_dm):
        dm.trainer = pl.Trainer(max_steps=batches + 10, accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        iterators.append(iter(dm.train_dataloader()))
    for it in iterators:  # workers started, first batches out
        for _ in range(10):
            next(it)
    times: list[list[float]] = [[], []]
    batch_tokens = [0, 0]
    for i in range(batches):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            x, _y = next(iterators[k])
            times[k].append(time.perf_counter() - t0)
            batch_tokens[k] = x.numel()
    return tuple({"total": batch_tokens[k] * batches / sum(times[k]),
                  "median_batch": batch_tokens[k] / statistics.median(times[k])} for k in (0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16_000_000, help="tokens read per measurement")
    ap.add_argument("--workers", default="0", help="loader worker counts; with workers the timed next() is the "
                    "main process's wait, both loaders' workers sharing the cores")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    quiet()
    info = machine()
    cache = str(Path(compose([]).data.cache_dir))
    rows = []
    for seq_len, batch in SHAPES:
        for workers in (int(w) for w in args.workers.split(",")):
            single_dm = data_module(False, seq_len, batch, workers, cache)
            mix_dm = data_module(True, seq_len, batch, workers, cache)
            batches = max(50, args.tokens // (batch * seq_len))
            twin_dm = data_module(False, seq_len, batch, workers, cache)
            per_round = []
            for _ in range(args.rounds):
                load_at_start = load_avg()
                single, mix = interleaved_tokens_per_s(single_dm, mix_dm, batches)
                a, b = interleaved_tokens_per_s(single_dm, twin_dm, batches)
                per_round.append({"load_avg_1m": load_at_start, "single": single["total"], "mixture": mix["total"],
                                  "ratio": mix["total"] / single["total"], "a_a_ratio": b["total"] / a["total"],
                                  "single_median_batch": single["median_batch"],
                                  "mixture_median_batch": mix["median_batch"],
                                  "ratio_median_batch": mix["median_batch"] / single["median_batch"],
                                  "a_a_ratio_median_batch": b["median_batch"] / a["median_batch"]})
            row = {"seq_len": seq_len, "batch_size": batch, "workers": workers, "batches": batches, "rounds": per_round}
            for key in ("single", "mixture", "ratio", "a_a_ratio", "single_median_batch", "mixture_median_batch",
                        "ratio_median_batch", "a_a_ratio_median_batch"):
                row[key] = statistics.median(r[key] for r in per_round)
            rows.append(row)
            print(f"{batch}x{seq_len}, {workers} workers: single {row['single']:,.0f} tokens/s, "
                  f"mixture {row['mixture']:,.0f} tokens/s, ratio {row['ratio']:.3f} "
                  f"(rounds: {', '.join(format(r['ratio'], '.3f') for r in per_round)}); A/A "
                  f"{', '.join(format(r['a_a_ratio'], '.3f') for r in per_round)}; at the median batch: ratio "
                  f"{', '.join(format(r['ratio_median_batch'], '.3f') for r in per_round)}, A/A "
                  f"{', '.join(format(r['a_a_ratio_median_batch'], '.3f') for r in per_round)}; load avg "
                  f"{', '.join(str(r['load_avg_1m']) for r in per_round)}", flush=True)
    info["load_avg_1m_end"] = load_avg()
    mix_stats = data_module(True, 256, 8, 0, cache).corpus_stats()
    goal_met = all(r["ratio_median_batch"] >= GOAL for r in rows)
    print(f"\n{describe(info)}; mixture of {len(MIX)} sources ({', '.join(s['file_glob'] for s in MIX)}), "
          f"{args.tokens:,} tokens per measurement, median of {args.rounds} rounds; load avg at the end "
          f"{info['load_avg_1m_end']}")
    print(markdown_table(
        ["batch x seq", "workers", "single tokens/s (median batch)", "mixture tokens/s (median batch)",
         "mixture / single (median batch)", "A/A (median batch)", "mixture / single (total time)",
         "A/A (total time)"],
        [[f"{r['batch_size']} x {r['seq_len']}", r["workers"], f"{r['single_median_batch']:,.0f}",
          f"{r['mixture_median_batch']:,.0f}", f"{r['ratio_median_batch']:.3f}", f"{r['a_a_ratio_median_batch']:.3f}",
          f"{r['ratio']:.3f}", f"{r['a_a_ratio']:.3f}"] for r in rows]))
    print(f"goal: mixture >= {GOAL}x single source (median batch): {'met' if goal_met else 'MISSED'}")
    write_json(args.json, {"machine": info, "mixture": MIX, "mixture_sources": mix_stats.get("sources"),
                           "tokens_per_measurement": args.tokens, "rows": rows, "goal_ratio": GOAL, "goal_met": goal_met})


if __name__ == "__main__":
    main()
