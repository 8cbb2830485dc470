"""Data checks: is this corpus fit to train on?

Reads the documents exactly as the shard builder does, splits them into train and validation
exactly as it does, and reports: document count, empty and whitespace-only documents,
undecodable documents, exact duplicates, near-duplicates (datasketch MinHash LSH for candidates,
then the exact Jaccard similarity of their shingle sets, so what is reported is exact), the
length distribution, train/validation leakage (a validation document with an exact or near copy
in train) and token statistics from the built shards. Each check has a threshold in
`data.quality` (trainer/config/schema.py, Gopher-anchored defaults).

A report is a pure function of the data fingerprint and the thresholds, so it is cached next to
the token shards and computed once per corpus (under a lock, like the shards).
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import UserError
from trainer.files import atomic_write_text
from trainer.config import DataQualityConfig
from trainer.lifecycle.corpus import Documents, module_documents, open_data_module, shingles, single_byte_ids, summary, words
from trainer.tracking.run_dir import RunDir

log = logging.getLogger("trainer")
REPORT_FORMAT = 1  # bump when a report's content changes for the same inputs
MAX_EXAMPLES = 20  # per check, in the report


# --------------------------------------------------------------------------- the checks (pure functions)
def document_checks(texts: list[str], is_val: np.ndarray | None, q: DataQualityConfig) -> dict[str, Any]:
    """Every document-level finding. is_val: the validation mask (None: split by token tail, no leakage check)."""
    n = len(texts)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    undecodable = [i for i, t in enumerate(texts) if "\ufffd" in t]
    exact_groups = _exact_groups(texts)
    representative = {i: g[0] for g in exact_groups for i in g}  # each copy -> the first of its group
    candidates = [i for i in range(n) if texts[i].strip() and representative.get(i, i) == i]
    doc_words = [words(t) for t in texts]
    near_pairs = _near_duplicate_pairs(candidates, doc_words, q) if _has_datasketch() else []
    near_clusters = _clusters(near_pairs)
    word_counts = [len(w) for w in doc_words]
    mean_word_len = [float(np.mean([len(x) for x in w])) if w else 0.0 for w in doc_words]
    nonempty = [i for i in range(n) if texts[i].strip()]
    length_outliers = [i for i in nonempty if not q.min_words <= word_counts[i] <= q.max_words]
    word_len_outliers = [i for i in nonempty if not q.min_mean_word_length <= mean_word_len[i] <= q.max_mean_word_length]
    out = {
        "documents": n,
        "empty": {"count": len(empty), "documents": empty},
        "undecodable": {"count": len(undecodable), "documents": undecodable},
        "exact_duplicates": {"count": sum(len(g) - 1 for g in exact_groups), "groups": exact_groups},
        "near_duplicates": {"count": sum(len(c) - 1 for c in near_clusters), "clusters": near_clusters,
                            "pairs": [{"a": a, "b": b, "jaccard": round(j, 4)} for a, b, j in near_pairs],
                            **({} if _has_datasketch() else {"skipped": NO_DATASKETCH})},
        "lengths": {"chars": summary(len(t) for t in texts), "words": summary(word_counts),
                    "histogram_words": _log2_histogram(word_counts)},
        "length_outliers": {"count": len(length_outliers), "documents": length_outliers},
        "word_length_outliers": {"count": len(word_len_outliers), "documents": word_len_outliers},
    }
    if is_val is not None:
        out["split"] = {"train_documents": int(n - is_val.sum()), "val_documents": int(is_val.sum())}
        out["leakage"] = _leakage(is_val, exact_groups, near_pairs, representative)
    return out


NO_DATASKETCH = "not checked: datasketch is not installed (pip install -e '.[lifecycle]')"


def _has_datasketch() -> bool:
    import importlib.util

    return importlib.util.find_spec("datasketch") is not None


def _exact_groups(texts: list[str]) -> list[list[int]]:
    by_text: dict[bytes, list[int]] = {}
    for i, t in enumerate(texts):
        if t.strip():  # empties are reported as empties, not as copies of each other
            by_text.setdefault(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=16).digest(), []).append(i)
    return [g for g in by_text.values() if len(g) > 1]


def _near_duplicate_pairs(candidates: list[int], doc_words: list[list[str]], q: DataQualityConfig) -> list[tuple[int, int, float]]:
    """(a, b, Jaccard) with a < b for every pair at or above the threshold, verified exactly."""
    from datasketch import MinHash, MinHashLSH

    sets = {i: shingles(doc_words[i], q.shingle_words) for i in candidates}
    lsh = MinHashLSH(threshold=q.near_duplicate_jaccard, num_perm=q.num_perm)
    sketches = {}
    for i in candidates:
        m = MinHash(num_perm=q.num_perm, seed=q.seed)
        m.update_batch([s.encode("utf-8", "replace") for s in sets[i]])
        sketches[i] = m
        lsh.insert(i, m)
    pairs = []
    for i in candidates:
        for j in lsh.query(sketches[i]):
            if j > i:
                a, b = sets[i], sets[j]
                jaccard = len(a & b) / len(a | b)
                if jaccard >= q.near_duplicate_jaccard:
                    pairs.append((i, j, jaccard))
    return sorted(pairs)


def _clusters(pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted(sorted(g) for g in groups.values())


def _leakage(is_val: np.ndarray, exact_groups, near_pairs, representative) -> dict[str, Any]:
    """Validation documents with an exact or near copy in the training split."""
    members: dict[int, list[int]] = {g[0]: g for g in exact_groups}
    leaks: dict[int, dict] = {}
    for g in exact_groups:
        train = [i for i in g if not is_val[i]]
        for i in g:
            if is_val[i] and train:
                leaks.setdefault(i, {"val": i, "train": train[0], "kind": "exact"})
    for a, b, j in near_pairs:  # a, b are representatives: expand to their copies
        ga, gb = members.get(a, [a]), members.get(b, [b])
        for x, other in ((ga, gb), (gb, ga)):
            train = [i for i in other if not is_val[i]]
            for i in x:
                if is_val[i] and train:
                    leaks.setdefault(i, {"val": i, "train": train[0], "kind": "near", "jaccard": round(j, 4)})
    found = sorted(leaks.values(), key=lambda r: r["val"])
    n_val = int(is_val.sum())
    return {"count": len(found), "val_documents": n_val, "documents": [r["val"] for r in found], "pairs": found}


def _log2_histogram(values: list[int]) -> list[dict]:
    """Document counts by word count in powers of two: [0], [1, 2), [2, 4), ..."""
    if not values:
        return []
    top = int(np.ceil(np.log2(max(values) + 1))) + 1
    edges = [0] + [2 ** k for k in range(top)]
    counts, _ = np.histogram(values, bins=edges + [edges[-1] * 2])
    return [{"from": int(lo), "to": int(hi), "documents": int(c)} for lo, hi, c in zip(edges, edges[1:] + [edges[-1] * 2], counts)]


def token_checks(dm) -> dict[str, Any]:
    """Token statistics of the built shards, all sources together (what the model will see)."""
    metas = [s.meta for s in dm.shard_sets]
    counts = sum(s.unigram().astype(np.int64) for s in dm.shard_sets)  # training-token counts per id
    total = max(1, int(counts.sum()))
    tokens = sum(m["train_tokens"] + m["val_tokens"] for m in metas)
    top = np.argsort(counts)[::-1][:10]
    out = {
        "tokenizer": metas[0]["tokenizer"].get("name", metas[0]["tokenizer"]["kind"]),
        "vocab_size": int(dm.vocab_size),
        "train_tokens": sum(m["train_tokens"] for m in metas),
        "val_tokens": sum(m["val_tokens"] for m in metas),
        "tokens_per_document": round(tokens / max(1, sum(m["documents"] for m in metas)), 1),
        "vocab_used_fraction": round(float((counts > 0).mean()), 4),
        "unigram_entropy_nats": round(float(dm.corpus_stats()["unigram_entropy_nats"]), 4),
        "top_tokens": [{"id": int(i), "text": dm.decode([int(i)]), "share": round(float(counts[i] / total), 4)}
                       for i in top if counts[i]],
    }
    ids = single_byte_ids(dm.tokenizer)
    if ids is not None:
        out["single_byte_token_fraction"] = round(float(counts[ids[ids < len(counts)]].sum() / total), 4)
    return out


# Which document-level finding each threshold judges, and the denominator of its share.
_THRESHOLDS = (
    ("empty", "max_empty_fraction", "documents"),
    ("undecodable", "max_undecodable_fraction", "documents"),
    ("exact_duplicates", "max_exact_duplicate_fraction", "documents"),
    ("near_duplicates", "max_near_duplicate_fraction", "documents"),
    ("leakage", "max_leaked_val_fraction", "val_documents"),
    ("length_outliers", "max_length_outlier_fraction", "documents"),
    ("word_length_outliers", "max_word_length_outlier_fraction", "documents"),
)


def judge(found: dict[str, Any], q: DataQualityConfig) -> list[dict[str, Any]]:
    """One row per check: value, threshold, passed."""
    rows = [{"check": "documents", "value": found["documents"], "threshold": f">= {q.min_documents}",
             "passed": found["documents"] >= q.min_documents}]
    for name, key, denominator in _THRESHOLDS:
        if name not in found:
            continue
        total = found["leakage"]["val_documents"] if denominator == "val_documents" else found["documents"]
        share = found[name]["count"] / total if total else 0.0
        limit = getattr(q, key)
        rows.append({"check": name, "count": found[name]["count"], "value": round(share, 4), "threshold": limit,
                     "key": f"data.quality.{key}", "passed": share <= limit,
                     **({"note": found[name]["skipped"]} if "skipped" in found[name] else {})})
    return rows


# --------------------------------------------------------------------------- running and caching
def run_checks(data: dict, q: DataQualityConfig) -> dict[str, Any]:
    """The full report of a resolved TokenDataModule `data` section."""
    started = time.time()
    dm = open_data_module(data)  # builds the shards if needed: token statistics describe what training reads
    docs: Documents = module_documents(dm)
    found = document_checks(docs.texts, docs.is_val, q)
    checks = judge(found, q)
    return {
        "format": REPORT_FORMAT,
        "data_fingerprint": dm.fingerprint,
        "source": str(data.get("path") or [s.get("path") for s in data.get("sources") or []]),
        "not_checked": docs.skipped,
        "names": docs.names,
        "thresholds": asdict(q),
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "findings": found,
        "tokens": token_checks(dm),
        "seconds": round(time.time() - started, 2),
    }


def cached_checks(data: dict, q: DataQualityConfig) -> tuple[dict[str, Any], bool]:
    """(report, computed_here): computed once per (data fingerprint, thresholds), others wait on the lock."""
    from filelock import FileLock

    from trainer.data.shards import cache_root

    dm = open_data_module(data)
    key = hashlib.sha256(json.dumps({"format": REPORT_FORMAT, "data": dm.fingerprint, "q": asdict(q), "near": _has_datasketch()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(data.get("cache_dir")) / "quality"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{dm.fingerprint}-{key}.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return json.loads(path.read_text()), False
        report = run_checks(data, q)
        atomic_write_text(path, json.dumps(report, indent=1, default=str))
        return report, True


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, json.dumps(report, indent=1, default=str))
    atomic_write_text(html_path, "<!doctype html><html><head><meta charset='utf-8'><title>Data check</title>"
                             f"<style>{CSS}</style></head><body>{html_section(report)}</body></html>")
    return json_path, html_path


def summary_line(report: dict[str, Any]) -> str:
    f = report["findings"]
    parts = [f"{f['documents']} documents", f"{f['empty']['count']} empty", f"{f['undecodable']['count']} undecodable",
             f"{f['exact_duplicates']['count']} exact and {f['near_duplicates']['count']} near duplicates"]
    if "leakage" in f:
        parts.append(f"{f['leakage']['count']} of {f['leakage']['val_documents']} validation documents leaked")
    if "skipped" in f["near_duplicates"]:
        parts.append(f"near duplicates {f['near_duplicates']['skipped']}")
    return ", ".join(parts)


def failure_lines(report: dict[str, Any]) -> list[str]:
    names = report.get("names") or []
    lines = []
    for c in report["checks"]:
        if c["passed"]:
            continue
        if c["check"] == "documents":
            lines.append(f"only {c['value']} documents (need {c['threshold']}: data.quality.min_documents)")
            continue
        docs = report["findings"][c["check"]].get("documents") or [i for g in report["findings"][c["check"]].get(
            "groups", report["findings"][c["check"]].get("clusters", [])) for i in g[1:]]
        examples = ", ".join(names[i] if i < len(names) else f"#{i}" for i in docs[:5])
        lines.append(f"{c['check']}: {c['count']} documents, {c['value']:.2%} > {c['key']}={c['threshold']}"
                     + (f" (e.g. {examples})" if examples else ""))
    return lines


# --------------------------------------------------------------------------- before training
def check_before_training(cfg, run_dir: Path, rank: int) -> dict[str, Any] | None:
    """The automatic data check of `python -m trainer.train`: every rank gets the same (cached) report;
    rank 0 writes it into the run dir. Raises UserError on a failed check with data.quality.on_fail=error."""
    from omegaconf import OmegaConf

    from trainer.config import quality_of

    data = cfg.get("data")
    q = quality_of(data)  # None: not a text corpus (tables, your own data module): nothing to read as documents
    if q is None or not q.enabled:
        return None
    resolved = OmegaConf.to_container(data, resolve=True)
    report, computed = cached_checks(resolved, q)
    if rank == 0:
        write_report(report, RunDir(run_dir).data_check)
        how = f"{report['seconds']}s" if computed else "cached"
        print(f"data check ({how}): {'passed' if report['passed'] else 'FAILED'}: {summary_line(report)}", flush=True)
    if report["passed"]:
        return report
    lines = failure_lines(report)
    if q.on_fail == "error":
        raise UserError(
            "the data check failed before training:\n  " + "\n  ".join(lines)
            + f"\nReport: {RunDir(run_dir).data_check / 'report.html'}. Fix the data, raise the threshold named, or train "
            "anyway with data.quality.on_fail=warn."
        )
    if rank == 0:
        for line in lines:
            log.warning("data check: %s (data.quality.on_fail=warn: training anyway)", line)
    return report


# --------------------------------------------------------------------------- HTML and W&B
CSS = ("body{font-family:sans-serif;margin:2em;max-width:70em} table{border-collapse:collapse;margin:.5em 0}"
       "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left} .fail{background:#fdd} .pass{background:#dfd}"
       ".bar{background:#69c;height:.8em;display:inline-block}")


def html_section(report: dict[str, Any]) -> str:
    e = html.escape
    f, t, names = report["findings"], report["tokens"], report.get("names") or []
    name = lambda i: e(names[i] if i < len(names) else f"#{i}")  # noqa: E731
    out = [f"<section id='data-check'><h2>Data check: {'passed' if report['passed'] else 'FAILED'}</h2>",
           f"<p>{e(report['source'])} (fingerprint {e(str(report['data_fingerprint']))}): {e(summary_line(report))}</p>",
           "<table><tr><th>check</th><th>count</th><th>share</th><th>threshold</th><th></th></tr>"]
    for c in report["checks"]:
        value = c["value"] if c["check"] == "documents" else f"{c['value']:.2%}"
        out.append(f"<tr class='{'pass' if c['passed'] else 'fail'}'><td>{e(c['check'])}</td><td>{c.get('count', '')}</td>"
                   f"<td>{value}</td><td>{e(str(c['threshold']))} <small>{e(c.get('key', ''))}</small></td>"
                   f"<td>{'ok' if c['passed'] else 'FAIL'}</td></tr>")
    out.append("</table>")
    for title, docs in (("Empty or whitespace-only", f["empty"]["documents"]), ("Undecodable", f["undecodable"]["documents"])):
        if docs:
            out.append(f"<h3>{title}</h3><p>{', '.join(name(i) for i in docs[:MAX_EXAMPLES])}</p>")
    if f["exact_duplicates"]["groups"]:
        out.append("<h3>Exact duplicates</h3><ul>" + "".join(
            f"<li>{' = '.join(name(i) for i in g)}</li>" for g in f["exact_duplicates"]["groups"][:MAX_EXAMPLES]) + "</ul>")
    if f["near_duplicates"]["pairs"]:
        out.append("<h3>Near duplicates</h3><ul>" + "".join(
            f"<li>{name(p['a'])} ~ {name(p['b'])} (Jaccard {p['jaccard']})</li>" for p in f["near_duplicates"]["pairs"][:MAX_EXAMPLES]) + "</ul>")
    if f.get("leakage", {}).get("pairs"):
        out.append("<h3>Validation documents with a copy in train</h3><ul>" + "".join(
            f"<li>{name(p['val'])} (val) ~ {name(p['train'])} (train), {p['kind']}</li>" for p in f["leakage"]["pairs"][:MAX_EXAMPLES]) + "</ul>")
    w = f["lengths"]["words"]
    out.append("<h3>Length distribution (words per document)</h3><table><tr>"
               + "".join(f"<th>{k}</th>" for k in ("min", "p5", "p50", "p95", "max", "mean"))
               + "</tr><tr>" + "".join(f"<td>{w.get(k, 0):,.0f}</td>" for k in ("min", "p5", "p50", "p95", "max", "mean"))
               + "</tr></table><table>")
    top = max((b["documents"] for b in f["lengths"]["histogram_words"]), default=1) or 1
    for b in f["lengths"]["histogram_words"]:
        out.append(f"<tr><td>{b['from']:,}-{b['to'] - 1:,}</td><td>{b['documents']}</td>"
                   f"<td><span class='bar' style='width:{20 * b['documents'] / top:.1f}em'></span></td></tr>")
    out.append("</table><h3>Tokens</h3><table>")
    for k, v in t.items():
        if k != "top_tokens":
            out.append(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>")
    out.append("<tr><td>top tokens</td><td>" + e(", ".join(f"{x['text']!r} {x['share']:.1%}" for x in t["top_tokens"])) + "</td></tr>")
    out.append("</table></section>")
    return "\n".join(out)


def wandb_table(report: dict[str, Any]):
    import wandb

    table = wandb.Table(columns=["check", "count", "share", "threshold", "passed"])
    for c in report["checks"]:
        table.add_data(c["check"], c.get("count", c["value"]), float(c["value"]), str(c["threshold"]), bool(c["passed"]))
    return table


def report_sections(folder: Path) -> list[str]:
    """The data check's section of a run's HTML report (`folder`: RunDir.data_check); none without a check."""
    path = folder / "report.json"
    return [html_section(json.loads(path.read_text()))] if path.is_file() else []


def wandb_callbacks(folder: Path) -> list:
    """A callback that logs the run's data check (`folder`: RunDir.data_check) as a W&B table when the run
    has a W&B logger."""
    path = folder / "report.json"
    if not path.is_file():
        return []
    from pytorch_lightning import Callback

    class LogDataCheck(Callback):
        # Into the row of the first step of this session (after a resume, the step restored from the checkpoint),
        # left open for that step's metrics: a row committed on its own at W&B's own step counter took step 0 of
        # a fresh run (its train/loss was then dropped as out of order) and restarted a resumed run's axis at 0.
        def on_train_start(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            for lg in trainer.loggers:
                if type(lg).__name__.endswith("WandbLogger"):
                    try:
                        lg.log_metrics({"data_check": wandb_table(json.loads(path.read_text()))}, step=trainer.global_step)
                    except Exception as e:  # noqa: BLE001 - W&B never stops training
                        log.warning("could not log the data check to W&B (%s)", e)

    return [LogDataCheck()]
