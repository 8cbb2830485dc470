"""Drift detection: false-alarm rate on resamples of one corpus, detection rate as another corpus is mixed in.

    python benchmarks/drift_rates.py [--trials 20] [--sizes 500,2000] [--fractions 0,0.1,0.2,0.3,0.5,0.75,1]
                                     [--out docs/benchmarks/drift_rates.json]

Reference and current are disjoint random samples of `size` documents (paragraphs of this
interpreter's stdlib sources: code). In the current sample a `fraction` of the documents is
replaced by English prose (the language reference topics behind help(), pydoc_data). Fraction 0
measures false alarms; above 0, detection. Each cell is `trials` seeded draws, for the byte
tokenizer (the default) and a 4096-token BPE learned on a separate sample of the code. Reported
per cell: the share of trials flagged as drifted, overall and by measurement, with the default
thresholds (trainer/config/schema.py, DriftConfig).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lifecycle.corpora import prose_paragraphs, stdlib_paragraphs  # noqa: E402
from trainer.data.tokenizer import BPETokenizer, ByteTokenizer  # noqa: E402
from trainer.config import DriftConfig  # noqa: E402
from trainer.lifecycle.drift import measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sizes", default="500,2000")
    ap.add_argument("--fractions", default="0,0.1,0.2,0.3,0.5,0.75,1")
    ap.add_argument("--out", default="docs/benchmarks/drift_rates.json")
    a = ap.parse_args()
    code, prose = stdlib_paragraphs(), prose_paragraphs()
    rng = random.Random(12345)
    bpe_sample = set(rng.sample(range(len(code)), 3000))
    tokenizers = {"byte": ByteTokenizer(), "bpe4096": BPETokenizer.train(iter(code[i] for i in sorted(bpe_sample)), 4096)}
    pool = [c for i, c in enumerate(code) if i not in bpe_sample]  # documents the BPE never saw
    cfg = DriftConfig()
    rows = []
    started = time.time()
    for tok_name, tok in tokenizers.items():
        for size in map(int, a.sizes.split(",")):
            for fraction in map(float, a.fractions.split(",")):
                flags: dict[str, int] = {}
                drifted = 0
                for trial in range(a.trials):
                    r = random.Random(trial)
                    docs = r.sample(pool, 2 * size)
                    n_prose = round(fraction * size)
                    current = docs[size:2 * size - n_prose] + r.sample(prose, n_prose)
                    report = measure(docs[:size], current, tok, cfg)
                    drifted += report["drifted"]
                    for name, m in report["metrics"].items():
                        flags[name] = flags.get(name, 0) + int(m["drifted"])
                row = {"tokenizer": tok_name, "documents_per_side": size, "prose_fraction": fraction, "trials": a.trials,
                       "flagged_rate": drifted / a.trials, "by_measurement": {k: v / a.trials for k, v in flags.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"benchmark": "drift_rates", "thresholds": cfg.__dict__, "corpus": "stdlib *.py paragraphs (code)",
           "shift": "pydoc_data topics paragraphs (English prose)", "seconds": round(time.time() - started, 1), "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
