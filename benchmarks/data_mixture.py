"""Loader throughput of a 3-source weighted mixture against a single source, same run.

    python benchmarks/data_mixture.py [--batches 300] [--workers 0,2] [--rounds 3] [--json out.json]

The real step-indexed train loader (TokenDataModule.train_dataloader() attached to a real
pl.Trainer), byte tokens of this interpreter's standard library:
  single source   data.path=stdlib (*.py of the top directory);
  3-source mixture the same files split three ways by name (data.sources with file_glob [a-f]*.py,
                  [g-o]*.py, [p-z_]*.py), weights 0.5 / 0.3 / 0.2: window ids drawn by (seed, step, slot),
                  mapped to a source, read from that source's memory-mapped shard.
Tokens/s delivered, for each shape and worker count; ratio = mixture / single, per round, median.
Goal: >= 0.9.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compose, describe, machine, markdown_table, quiet, write_json  # noqa: E402
from benchmarks.data import train_loader_tokens_per_s  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--workers", default="0,2")
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
            per_round = []
            for _ in range(args.rounds):  # interleaved: load changes hit both alike
                single, mix = train_loader_tokens_per_s(single_dm, args.batches), train_loader_tokens_per_s(mix_dm, args.batches)
                per_round.append({"single": single, "mixture": mix, "ratio": mix / single})
            row = {"seq_len": seq_len, "batch_size": batch, "workers": workers, "rounds": per_round,
                   "single_tokens_per_s": statistics.median(r["single"] for r in per_round),
                   "mixture_tokens_per_s": statistics.median(r["mixture"] for r in per_round),
                   "ratio": statistics.median(r["ratio"] for r in per_round)}
            rows.append(row)
            print(f"{batch}x{seq_len}, {workers} workers: single {row['single_tokens_per_s']:,.0f} tokens/s, "
                  f"mixture {row['mixture_tokens_per_s']:,.0f} tokens/s, ratio {row['ratio']:.3f}", flush=True)
    mix_stats = data_module(True, 256, 8, 0, cache).corpus_stats()
    goal_met = all(r["ratio"] >= GOAL for r in rows)
    print(f"\n{describe(info)}; mixture of {len(MIX)} sources ({', '.join(s['file_glob'] for s in MIX)}), "
          f"{args.batches} batches per measurement, median of {args.rounds} rounds")
    print(markdown_table(
        ["batch x seq", "workers", "single source tokens/s", "3-source mixture tokens/s", "mixture / single"],
        [[f"{r['batch_size']} x {r['seq_len']}", r["workers"], f"{r['single_tokens_per_s']:,.0f}",
          f"{r['mixture_tokens_per_s']:,.0f}", f"{r['ratio']:.3f}"] for r in rows]))
    print(f"goal: mixture >= {GOAL}x single source: {'met' if goal_met else 'MISSED'}")
    write_json(args.json, {"machine": info, "mixture": MIX, "mixture_sources": mix_stats.get("sources"),
                           "batches": args.batches, "rows": rows, "goal_ratio": GOAL, "goal_met": goal_met})


if __name__ == "__main__":
    main()
