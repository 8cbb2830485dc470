"""Tokenization throughput of the shard build against raw `tokenizers` batch encoding, same run.

    python benchmarks/data_tokenize.py [--num-proc 1,2] [--vocab 32768] [--glob '*.py'] [--rounds 3] [--json out.json]

Tokenizer: a byte-level BPE (GPT-2 style, --vocab tokens) trained here on the corpus and saved with
`save_pretrained`, then given as `data.tokenizer=DIR`: the code path a hub name such as
openai-community/gpt2 takes (no network needed). Corpus: this interpreter's standard library
(--glob, default *.py: the top directory, ~4.7 MB), the same files for every row.

Rows, each timed from a cold start (empty shard cache, empty `datasets` cache):
  raw tokenizers      tokenizers.Tokenizer.encode_batch_fast over the documents, already in memory,
                      1000 per call: the baseline (its Rust threads use every core);
  shard build, num_proc=N
                      TokenDataModule.prepare_data(): read the files into `datasets`, hash documents for the
                      split, datasets.map(batched=True, num_proc=N) through the tokenizer, write the shards.
Ratio = (tokens/s of the build) / (tokens/s of raw encoding), per round, median over rounds: on wall
time, and on CPU time (user + system of this process and its reaped children: the map workers),
which a machine shared with other jobs disturbs far less. Goal: >= 0.8 at num_proc 1 and 2.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import describe, load_avg, machine, markdown_table, quiet, write_json  # noqa: E402

GOAL = 0.8
CORPUS = "stdlib"


def corpus_texts(glob: str) -> list[str]:
    from trainer.data.sources import SourceSpec, load_documents, quiet_datasets, resolve_source

    with tempfile.TemporaryDirectory() as hf, quiet_datasets():
        docs = load_documents(resolve_source(SourceSpec(CORPUS, file_glob=glob)), hf)
        return [t or "" for t in docs["text"]]


def make_tokenizer(texts: list[str], vocab: int, directory: Path) -> Path:
    from trainer.data.tokenizer import BPETokenizer

    BPETokenizer.train(texts, vocab).save_pretrained(directory)
    return directory


def cpu_s() -> float:
    """User + system CPU seconds of this process and of its children that have ended."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def raw_encode(tokenizer_dir: Path, texts: list[str]) -> tuple[float, float, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    t0, c0 = time.perf_counter(), cpu_s()
    n = 0
    for i in range(0, len(texts), 1000):
        n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i : i + 1000], add_special_tokens=False))
    return time.perf_counter() - t0, cpu_s() - c0, n


def shard_build(tokenizer_dir: Path, num_proc: int, glob: str) -> tuple[float, float, int]:
    from trainer.data import TokenDataModule

    # A new cache dir: cold shards and a cold `datasets` cache (it lives under it unless HF_DATASETS_CACHE is set).
    with tempfile.TemporaryDirectory(prefix="bench-tok-") as cache:
        dm = TokenDataModule(path=CORPUS, file_glob=glob, tokenizer=str(tokenizer_dir), cache_dir=cache,
                             num_proc=num_proc, seq_len=1024)
        t0, c0 = time.perf_counter(), cpu_s()
        dm.prepare_data()
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
        assert dm.built_shards, "the shards came from a cache: the timing would be meaningless"
        stats = dm.corpus_stats()
        documents = stats["documents"]
        return seconds, cpu, stats["train_tokens"] + stats["val_tokens"] - documents  # minus one EOS per document


def main() -> None:
    import os

    os.environ.pop("HF_DATASETS_CACHE", None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-proc", default="1,2")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--glob", default="*.py", help="which stdlib files (e.g. '**/*.py' for all, ~30 MB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    quiet()
    info = machine()
    texts = corpus_texts(args.glob)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB ({CORPUS} {args.glob})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as d:
        t0 = time.perf_counter()
        tok_dir = make_tokenizer(texts, args.vocab, Path(d))
        print(f"trained a {args.vocab}-token byte-level BPE in {time.perf_counter() - t0:.1f} s", flush=True)
        procs = [int(x) for x in args.num_proc.split(",")]
        rounds = []
        for r in range(args.rounds):  # interleaved, so a change in machine load hits every row alike
            load_at_start = load_avg()
            raw_s, raw_cpu, raw_tokens = raw_encode(tok_dir, texts)
            row = {"load_avg_1m": load_at_start, "raw": {"seconds": raw_s, "cpu_s": raw_cpu, "tokens": raw_tokens, "tokens_per_s": raw_tokens / raw_s}}
            for n in procs:
                s, cpu, tokens = shard_build(tok_dir, n, args.glob)
                assert tokens == raw_tokens, f"the build tokenized {tokens} tokens, raw encoding {raw_tokens}"
                row[f"num_proc={n}"] = {"seconds": s, "cpu_s": cpu, "tokens": tokens, "tokens_per_s": tokens / s,
                                        "ratio": raw_s / s, "cpu_ratio": raw_cpu / cpu}
            rounds.append(row)
            print(f"round {r + 1} (load avg {load_at_start}): raw {raw_s:.2f} s ({raw_cpu:.2f} CPU s); " + "; ".join(
                f"num_proc={n} {row[f'num_proc={n}']['seconds']:.2f} s ({row[f'num_proc={n}']['cpu_s']:.2f} CPU s): "
                f"{row[f'num_proc={n}']['ratio']:.2f}x wall, {row[f'num_proc={n}']['cpu_ratio']:.2f}x CPU" for n in procs),
                flush=True)
    tokens = rounds[0]["raw"]["tokens"]
    info["load_avg_1m_end"] = load_avg()
    table = [["raw tokenizers encode_batch_fast (texts in memory)", f"{statistics.median(r['raw']['seconds'] for r in rounds):.2f}",
              f"{statistics.median(r['raw']['cpu_s'] for r in rounds):.2f}",
              f"{statistics.median(r['raw']['tokens_per_s'] for r in rounds):,.0f}", "1.00", "1.00"]]
    summary_rows = {}
    for n in procs:
        key = f"num_proc={n}"
        ratio = statistics.median(r[key]["ratio"] for r in rounds)
        cpu_ratio = statistics.median(r[key]["cpu_ratio"] for r in rounds)
        summary_rows[key] = {"median_seconds": statistics.median(r[key]["seconds"] for r in rounds),
                             "median_cpu_s": statistics.median(r[key]["cpu_s"] for r in rounds),
                             "median_tokens_per_s": statistics.median(r[key]["tokens_per_s"] for r in rounds),
                             "median_ratio": ratio, "median_cpu_ratio": cpu_ratio}
        table.append([f"shard build, data.num_proc={n} (files -> shards)", f"{summary_rows[key]['median_seconds']:.2f}",
                      f"{summary_rows[key]['median_cpu_s']:.2f}", f"{summary_rows[key]['median_tokens_per_s']:,.0f}",
                      f"{ratio:.2f}", f"{cpu_ratio:.2f}"])
    goal_met = all(v["median_ratio"] >= GOAL for v in summary_rows.values())
    print(f"\n{describe(info)}; {len(texts)} documents, {mb:.1f} MB, {tokens:,} tokens, BPE {args.vocab}; "
          f"median of {args.rounds} rounds; load avg at the rounds' starts "
          f"{', '.join(str(r['load_avg_1m']) for r in rounds)}, at the end {info['load_avg_1m_end']}")
    print(markdown_table(["configuration", "wall (s)", "CPU (s)", "tokens/s (wall)", "ratio vs raw (wall)",
                          "ratio vs raw (CPU)"], table))
    print(f"goal: >= {GOAL}x raw (wall) at every num_proc: {'met' if goal_met else 'MISSED'}; on CPU time: "
          f"{'met' if all(v['median_cpu_ratio'] >= GOAL for v in summary_rows.values()) else 'MISSED'}")
    write_json(args.json, {"machine": info, "corpus": f"{CORPUS} {args.glob}", "documents": len(texts), "megabytes": mb,
                           "tokens": tokens, "tokenizer": f"byte-level BPE {args.vocab}, loaded as data.tokenizer=DIR",
                           "rounds": rounds, "summary": summary_rows, "goal_ratio": GOAL, "goal_met": goal_met})


if __name__ == "__main__":
    main()
