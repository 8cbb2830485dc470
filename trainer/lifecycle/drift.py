"""Has the incoming data drifted from what a model was trained on?

Four measurements, each judged against an Evidently-like threshold (trainer/config/schema.py,
DriftConfig); the data has drifted when any judged measurement is above its threshold:
- PSI (population stability index) of document length in characters, over quantile bins of the
  reference: sum((cur - ref) * ln(cur / ref)), shares floored at 1e-4 as Evidently does;
- Jensen-Shannon distance (scipy, base 2, so in [0, 1]) between the token unigram distributions,
  both tokenized by the reference's tokenizer, in excess of the distance between two halves of the
  reference (see token_js_distance: with many token types, sampling alone makes distances large);
- the rise in the byte-fallback rate: the share of single-byte tokens of a byte-level BPE (text
  its merges do not cover); not applicable to the byte tokenizer, where every token is a byte;
- new vocabulary: the share of the current corpus's word occurrences (letters only, lower-cased)
  whose word is not in the reference, in excess of the share a same-size half of the reference
  itself brings (see new_vocabulary).
PSI needs enough documents on both sides (drift.min_documents): with n documents per side and b
bins its expected value on identical distributions is about (b - 1) * 2 / n (0.036 at 10 bins and
500 documents), so with fewer it is reported, not judged.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np

from trainer.config import DriftConfig
from trainer.lifecycle.corpus import encode_documents, single_byte_ids

EPS = 1e-4  # Evidently's floor for empty bins
_LETTER_WORD = re.compile(r"[^\W\d_]+")


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.clip(np.histogram(reference, edges)[0] / max(1, len(reference)), EPS, None)
    cur = np.clip(np.histogram(current, edges)[0] / max(1, len(current)), EPS, None)
    return float(((cur - ref) * np.log(cur / ref)).sum())


def js_distance(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    n = max(len(ref_counts), len(cur_counts))
    p = np.pad(ref_counts, (0, n - len(ref_counts))).astype(np.float64)
    q = np.pad(cur_counts, (0, n - len(cur_counts))).astype(np.float64)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def letter_words(texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(w.lower() for w in _LETTER_WORD.findall(t))
    return counts


def new_share(vocabulary: Counter, texts_words: Counter) -> tuple[float, list[str]]:
    """Share of word occurrences whose word is not in `vocabulary`, and the most frequent such words."""
    total = sum(texts_words.values())
    new = Counter({w: c for w, c in texts_words.items() if w not in vocabulary})
    return (sum(new.values()) / total if total else 0.0), [w for w, _ in new.most_common(20)]


def _halves(reference: list[str]) -> tuple[list[str], list[str]]:
    """The reference's documents in two random halves (fixed seed): its own sampling noise."""
    import random

    order = list(range(len(reference)))
    random.Random(0).shuffle(order)
    half = len(order) // 2
    return [reference[i] for i in order[:half]], [reference[i] for i in order[half:]]


def token_js_distance(half_a: np.ndarray, half_b: np.ndarray, current: np.ndarray, vocab: int, cfg: DriftConfig) -> dict[str, Any]:
    """Jensen-Shannon distance of the current tokens from the reference's, above the reference's own noise.

    With thousands of token types a finite sample's unigram distribution differs from another sample of
    the same corpus (JS distance ~0.2 between two 2,000-paragraph halves under an 8k BPE); the square
    root in the distance makes that bias large. So: JS(half A, current) - JS(half A, half B), with the
    current tokens and half B cut to the same count (the same sampling noise on both sides).
    """
    m = min(len(half_b), len(current))
    count = lambda ids: np.bincount(ids[:m].astype(np.int64), minlength=vocab)  # noqa: E731
    ref = np.bincount(half_a.astype(np.int64), minlength=vocab)
    measured, baseline = js_distance(ref, count(current)), js_distance(ref, count(half_b))
    return {"value": measured - baseline, "current_distance": measured, "reference_baseline": baseline,
            "tokens_compared": int(m), "threshold": cfg.js_threshold, "key": "drift.js_threshold", "judged": m > 0}


def new_vocabulary(reference: list[str], current: list[str], cfg: DriftConfig) -> dict[str, Any]:
    """New words in `current` beyond what a sample of the reference itself brings.

    The share of unseen words falls as the reference grows (Heaps' law), so a raw share has no fixed
    threshold. The reference is split in two halves at random (fixed seed): the share of half B's
    words unseen in half A is the baseline; the current corpus is measured against the same half A.
    The judged value is current - baseline (both rates per word occurrence, so the size of the
    current corpus does not bias it).
    """
    half_a, half_b = _halves(reference)
    vocab_a = letter_words(half_a)
    baseline, _ = new_share(vocab_a, letter_words(half_b))
    cur_words = letter_words(current)
    against_half, _ = new_share(vocab_a, cur_words)
    raw, top = new_share(letter_words(reference), cur_words)
    return {"value": against_half - baseline, "current_share": against_half, "reference_baseline": baseline,
            "share_vs_whole_reference": raw, "threshold": cfg.new_vocab_threshold, "key": "drift.new_vocab_threshold",
            "judged": bool(cur_words) and bool(half_a), "top_new_words": top}


def measure(reference: list[str], current: list[str], tokenizer, cfg: DriftConfig) -> dict[str, Any]:
    """The drift report of two corpora (lists of documents), tokenized by the reference's tokenizer."""
    started = time.time()
    vocab = int(tokenizer.vocab_size)
    half_a, half_b = _halves(reference)
    ref_ids, cur_ids = encode_documents(tokenizer, reference), encode_documents(tokenizer, current)
    ref_tokens, cur_tokens = (np.bincount(x.astype(np.int64), minlength=vocab) for x in (ref_ids, cur_ids))
    enough = min(len(reference), len(current)) >= cfg.min_documents
    metrics: dict[str, dict[str, Any]] = {
        "doc_length_psi": {"value": psi(np.array([len(t) for t in reference]), np.array([len(t) for t in current]), cfg.psi_bins),
                           "threshold": cfg.psi_threshold, "key": "drift.psi_threshold", "judged": enough,
                           **({} if enough else {"note": f"fewer than drift.min_documents={cfg.min_documents} documents"})},
        "token_js_distance": token_js_distance(encode_documents(tokenizer, half_a), encode_documents(tokenizer, half_b),
                                               cur_ids, vocab, cfg),
    }
    ids = single_byte_ids(tokenizer)
    if ids is not None:
        ref_rate = float(ref_tokens[ids].sum() / max(1, ref_tokens.sum()))
        cur_rate = float(cur_tokens[ids].sum() / max(1, cur_tokens.sum()))
        metrics["byte_fallback_increase"] = {"value": cur_rate - ref_rate, "reference_rate": ref_rate, "current_rate": cur_rate,
                                             "threshold": cfg.byte_fallback_threshold, "key": "drift.byte_fallback_threshold",
                                             "judged": True}
    else:
        metrics["byte_fallback_increase"] = {"value": None, "judged": False,
                                             "note": "byte tokenizer: every token is a byte, nothing falls back"}
    metrics["new_vocab_share"] = new_vocabulary(reference, current, cfg)
    for m in metrics.values():
        m["drifted"] = bool(m["judged"] and m["value"] is not None and m["value"] > m["threshold"])
    return {
        "drifted": any(m["drifted"] for m in metrics.values()),
        "metrics": metrics,
        "reference_documents": len(reference),
        "current_documents": len(current),
        "tokenizer": getattr(tokenizer, "kind", "?"),
        "thresholds": asdict(cfg),
        "seconds": round(time.time() - started, 2),
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, m in report["metrics"].items():
        if m["value"] is None:
            lines.append(f"{name}: n/a ({m.get('note', '')})")
            continue
        verdict = "DRIFT" if m["drifted"] else ("ok" if m["judged"] else "not judged")
        lines.append(f"{name}: {m['value']:.4f} (threshold {m['threshold']}, {m['key']}): {verdict}"
                     + (f" - {m['note']}" if m.get("note") else ""))
    return lines


def html_page(report: dict[str, Any]) -> str:
    import html

    e = html.escape
    rows = []
    for name, m in report["metrics"].items():
        value = "n/a" if m["value"] is None else f"{m['value']:.4f}"
        verdict = "DRIFT" if m["drifted"] else ("ok" if m["judged"] else "not judged")
        rows.append(f"<tr class='{'fail' if m['drifted'] else 'pass'}'><td>{e(name)}</td><td>{value}</td>"
                    f"<td>{e(str(m.get('threshold', '')))}</td><td>{verdict}</td><td>{e(m.get('note', ''))}</td></tr>")
    new_words = ", ".join(report["metrics"]["new_vocab_share"].get("top_new_words", []))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Drift</title><style>"
            "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.2em .6em}"
            ".fail{background:#fdd} .pass{background:#dfd}</style></head><body>"
            f"<h1>Drift: {'DRIFTED' if report['drifted'] else 'no drift'}</h1>"
            f"<p>reference: {e(str(report.get('reference')))} ({report['reference_documents']} documents)<br>"
            f"current: {e(str(report.get('current')))} ({report['current_documents']} documents)<br>"
            f"tokenizer: {e(report['tokenizer'])}</p>"
            "<table><tr><th>measurement</th><th>value</th><th>threshold</th><th>verdict</th><th></th></tr>"
            f"{''.join(rows)}</table><p>Most frequent new words: {e(new_words)}</p></body></html>")
