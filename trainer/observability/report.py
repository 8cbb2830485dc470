"""A self-contained performance report of one run (`python -m trainer.report run.dir=PATH`).

Reads only the run dir (csv/metrics.csv, perf/*.jsonl, perf/verdict.json, config.yaml,
profiler/), writes PATH/report/index.html and the PNG charts next to it (referenced
relatively: the folder can be copied or opened offline).
"""
from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from trainer.errors import UserError
from trainer.files import atomic_write_text
from trainer.observability.layout import PerfFiles
from trainer.observability.timing import PHASES
from trainer.tracking.run_dir import RunDir

PHASE_COLORS = {"data": "#d62728", "forward": "#1f77b4", "backward": "#2ca02c", "comm": "#ff7f0e", "optimizer": "#9467bd"}


# ---------------------------------------------------------------------------- reading
@dataclass
class RunData:
    run_dir: Path
    metrics: list[dict] = field(default_factory=list)  # rows of csv/metrics.csv
    ranks: dict[int, dict] = field(default_factory=dict)  # rank -> meta record
    steps: dict[int, list[dict]] = field(default_factory=dict)  # rank -> step records
    system: dict[str, list[dict]] = field(default_factory=dict)  # host -> samples
    stragglers: list[dict] = field(default_factory=list)
    verdict: Optional[dict] = None
    config: dict = field(default_factory=dict)
    profiler_tables: dict[str, str] = field(default_factory=dict)


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a crash: skip it, keep the rest
    return out


def load_run(run_dir: Path) -> RunData:
    rd = RunDir(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run.dir={run_dir} is not a directory; pass the run directory (runs/<name>/<id>)")
    if not rd.perf.is_dir():
        raise UserError(f"{run_dir} has no perf/ folder: not a run dir, or the run had observability.enabled=false")
    perf = PerfFiles(rd.perf)
    data = RunData(run_dir)
    if rd.metrics_csv.exists():
        with open(rd.metrics_csv, newline="") as fh:
            data.metrics = list(csv.DictReader(fh))
    for rank, path in perf.all_rank_records().items():
        records = read_jsonl(path)
        metas = [r for r in records if r.get("kind") == "meta"]
        data.ranks[rank] = metas[-1] if metas else {"rank": rank}
        # A resumed run appends: keep the newest record of each step.
        by_step: dict[int, dict] = {}
        for r in records:
            if r.get("kind") == "step":
                by_step[(r["step"], r["batch_idx"])] = r
        data.steps[rank] = sorted(by_step.values(), key=lambda r: (r["step"], r["batch_idx"]))
    for host, path in perf.all_system_samples().items():
        data.system[host] = read_jsonl(path)
    if perf.stragglers.exists():
        data.stragglers = read_jsonl(perf.stragglers)
    if perf.verdict.exists():
        data.verdict = json.loads(perf.verdict.read_text())
    if rd.config.exists():
        import yaml

        data.config = yaml.safe_load(rd.config.read_text()) or {}
    for path in sorted(rd.profiler.glob("top_kernels_rank*.txt")):
        data.profiler_tables[path.stem] = path.read_text()
    return data


def _float(x: Any) -> Optional[float]:
    try:
        return float(x) if x not in (None, "") else None
    except ValueError:
        return None


def rolling_mean(values: list[float], n: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= n:
            acc -= values[i - n]
        out.append(acc / min(i + 1, n))
    return out


# ---------------------------------------------------------------------------- charts
def _figure(rows: int = 1, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(10, height * rows), squeeze=False)
    return plt, fig, [a[0] for a in axes]


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def chart_loss(data: RunData, out: Path) -> Optional[str]:
    train = [(int(r["step"]), _float(r.get("train/loss"))) for r in data.metrics if _float(r.get("train/loss")) is not None]
    val = [(int(r["step"]), _float(r.get("val/loss"))) for r in data.metrics if _float(r.get("val/loss")) is not None]
    if not train and not val:
        return None
    plt, fig, (ax,) = _figure()
    if train:
        ax.plot(*zip(*train), label="train/loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val/loss", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss")
    return _save(plt, fig, out / "loss.png")


def _timed(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("step_s")]


def chart_throughput(data: RunData, out: Path) -> Optional[str]:
    if not any(_timed(s) for s in data.steps.values()):
        return None
    has_mfu = any(m.get("peak_tflops") and m.get("flops_per_token") for m in data.ranks.values())
    plt, fig, axes = _figure(2 if has_mfu else 1)
    ax = axes[0]
    unit = "tokens/s" if any(r.get("tokens") for s in data.steps.values() for r in s) else "samples/s"
    per_step_total: dict[int, float] = {}
    for rank, records in sorted(data.steps.items()):
        timed = _timed(records)
        if not timed:
            continue
        rates = [(r["tokens"] if unit == "tokens/s" else r["samples"]) / r["step_s"] for r in timed]
        steps = [r["step"] for r in timed]
        ax.plot(steps, rolling_mean(rates, 10), lw=1, label=f"rank {rank}")
        for s, v in zip(steps, rates):
            per_step_total[s] = per_step_total.get(s, 0.0) + v
    if len(data.steps) > 1 and per_step_total:
        steps = sorted(per_step_total)
        ax.plot(steps, rolling_mean([per_step_total[s] for s in steps], 10), "k", lw=1.5, label="all ranks")
    ax.set_ylabel(unit)
    ax.set_xlabel("step")
    ax.set_title(f"Throughput ({unit}, rolling mean of 10 steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_mfu:
        ax = axes[1]
        for rank, records in sorted(data.steps.items()):
            meta = data.ranks.get(rank, {})
            peak, fpt, tps = meta.get("peak_tflops"), meta.get("flops_per_token"), meta.get("tokens_per_sample")
            timed = [r for r in _timed(records) if r.get("tokens")]
            if not (peak and fpt and timed):
                continue
            mfu = [100 * fpt * r["tokens"] / r["step_s"] / (peak * 1e12) for r in timed]
            ax.plot([r["step"] for r in timed], rolling_mean(mfu, 10), lw=1, label=f"rank {rank}")
        ax.set_ylabel("MFU %")
        ax.set_xlabel("step")
        ax.set_title("Model FLOPs utilisation (per device, dense peak)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, out / "throughput.png")


def chart_phases(data: RunData, out: Path) -> Optional[str]:
    ranks = [r for r in sorted(data.steps) if _timed(data.steps[r])]
    if not ranks:
        return None
    plt, fig, axes = _figure(len(ranks), height=2.8)
    for ax, rank in zip(axes, ranks):
        timed = _timed(data.steps[rank])
        steps = [r["step"] for r in timed]
        layers = [rolling_mean([1000 * (r.get(p) or 0.0) for r in timed], 5) for p in PHASES]
        ax.stackplot(steps, *layers, labels=PHASES, colors=[PHASE_COLORS[p] for p in PHASES], alpha=0.85)
        ax.plot(steps, rolling_mean([1000 * r["step_s"] for r in timed], 5), "k", lw=0.8, label="step")
        ax.set_ylabel("ms per step")
        ax.set_title(f"Step phases, rank {rank} (rolling mean of 5)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=6)
    axes[-1].set_xlabel("step")
    return _save(plt, fig, out / "phases.png")


GPU_PANELS = (("util", "GPU util %"), ("power_w", "power W"), ("sm_clock_mhz", "SM clock MHz"),
              ("temp_c", "temperature C"), ("mem_used_gb", "memory used GB"))
SYS_PANELS = (("cpu_percent", "process CPU %"), ("rss_gb", "process RSS GB"), ("host_mem_used_gb", "host memory used GB"))


def _gpu_series(data: RunData) -> list[tuple[str, str, int]]:
    """(label, host, NVML index) per line: one per rank on a GPU; without that mapping (a CPU
    run on a GPU node) every sampled GPU of every node."""
    out = []
    for rank, meta in sorted(data.ranks.items()):
        if meta.get("gpu_index") is not None and meta.get("host") in data.system:
            out.append((f"rank {rank} ({meta['host']} GPU {meta['gpu_index']})", meta["host"], int(meta["gpu_index"])))
    if not out:
        for host, samples in sorted(data.system.items()):
            indices = sorted({g["index"] for s in samples for g in s.get("gpus", [])})
            out += [(f"{host} GPU {i}", host, i) for i in indices]
    return out


def chart_system(data: RunData, out: Path) -> list[tuple[str, str]]:
    """GPU timelines per rank (NVML), else the host CPU/memory per node. [(title, png)]"""
    charts = []
    t0 = min((s[0]["t"] for s in data.system.values() if s), default=0.0)
    series = _gpu_series(data)
    if series:
        plt, fig, axes = _figure(len(GPU_PANELS), height=2.2)
        for label, host, index in series:
            samples = [(s["t"] - t0, g) for s in data.system[host] for g in s.get("gpus", []) if g["index"] == index]
            for ax, (key, unit) in zip(axes, GPU_PANELS):
                pts = [(t, g[key]) for t, g in samples if key in g]
                if pts:
                    ax.plot(*zip(*pts), lw=1, label=label)
                ax.set_ylabel(unit, fontsize=8)
                ax.grid(alpha=0.3)
            throttled = [t for t, g in samples if g.get("throttle")]
            for t in throttled:
                axes[2].axvline(t, color="r", alpha=0.15, lw=2)
        axes[0].legend(fontsize=7)
        axes[0].set_title("GPU timelines (NVML; red bands on the SM clock: throttled samples)")
        axes[-1].set_xlabel("seconds since the first sample")
        charts.append(("GPU timelines", _save(plt, fig, out / "gpu.png")))
    elif any(data.system.values()):
        charts.append(("No GPU was sampled (NVML unavailable): host timelines", ""))
    if any(data.system.values()):
        plt, fig, axes = _figure(len(SYS_PANELS), height=2.2)
        for host, samples in sorted(data.system.items()):
            for ax, (key, unit) in zip(axes, SYS_PANELS):
                pts = [(s["t"] - t0, s["sys"][key]) for s in samples if key in s.get("sys", {})]
                if pts:
                    ax.plot(*zip(*pts), lw=1, label=host)
                ax.set_ylabel(unit, fontsize=8)
                ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        axes[0].set_title("Host per node (psutil)")
        axes[-1].set_xlabel("seconds since the first sample")
        charts.append(("Host CPU and memory", _save(plt, fig, out / "system.png")))
    return [c for c in charts if c[1]] + [c for c in charts if not c[1]]


def chart_stragglers(data: RunData, out: Path) -> Optional[str]:
    rows = [r for r in data.stragglers if r.get("busy_s")]
    if not rows or max(len(r["busy_s"]) for r in rows) < 2:  # one rank: nothing to compare
        return None
    plt, fig, (ax,) = _figure()
    world = max(len(r["busy_s"]) for r in rows)
    for rank in range(world):
        pts = [(r["step"], 1000 * r["busy_s"][rank]) for r in rows if rank < len(r["busy_s"]) and r["busy_s"][rank] is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, lw=1, label=f"rank {rank}")
    for r in rows:
        for rank, _slowdown in r.get("stragglers", []):
            ax.annotate(f"straggler {rank}", (r["step"], 1000 * r["busy_s"][rank]), fontsize=7, color="r",
                        textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xlabel("step")
    ax.set_ylabel("busy ms per step (median)")
    ax.set_title("Per-rank busy time (step minus waiting on other ranks), at each exchange")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "stragglers.png")


# ---------------------------------------------------------------------------- page
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.verdict{padding:1em 1.2em;border-radius:6px;background:#fff4e5;border:1px solid #f0b45c;font-size:1.05em}
.verdict.ok{background:#eef7ee;border-color:#8c8}
table{border-collapse:collapse;width:100%;font-size:.9em} td,th{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f5f5f5} tr.fired td{background:#fff4e5;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.75em}
.kv td:first-child{width:14em;color:#555}
"""


def _fmt(v: Any, key: str = "") -> str:
    if isinstance(v, float) and (key.startswith("frac_") or key in ("mfu", "mem_frac")):
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return "n/a" if v is None else str(v)


def render_html(data: RunData, charts: list[tuple[str, str]], system_notes: list[str], sections: Sequence[str] = ()) -> str:
    """`sections`: finished HTML sections other components own (the entry point adds the data check's)."""
    e = html.escape
    cfg = data.config
    run_name = (cfg.get("run") or {}).get("name", data.run_dir.parent.name)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Run report: {e(str(run_name))}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>Run report: {e(str(run_name))} / {e(data.run_dir.name)}</h1>"]
    verdict = (data.verdict or {}).get("verdict")
    parts.append("<h2>Verdict</h2>")
    if verdict:
        name = verdict["bottleneck"]
        if verdict.get("straggler_rank") is not None:
            name = f"straggler rank {verdict['straggler_rank']}"
        ok = verdict["bottleneck"] == "no clear bottleneck"
        final = "final" if data.verdict.get("final") else f"latest (step {verdict['step']}; the run did not finish)"
        parts.append(f"<div class='verdict{' ok' if ok else ''}' id='verdict'><b>{e(name)}</b>: {e(verdict['evidence'])}"
                     + (f"<br><b>Suggested fix</b>: {e(verdict['fix'])}" if verdict.get("fix") else "")
                     + f"<br><small>{e(final)} verdict at step {verdict['step']}</small></div>")
        parts.append("<table id='rules'><tr><th>rule</th><th>fired</th><th>evidence</th><th>suggested fix</th></tr>")
        for f in verdict.get("findings", []):
            parts.append(f"<tr class='{'fired' if f['fired'] else ''}'><td>{e(f['rule'])}</td><td>{'yes' if f['fired'] else '-'}</td>"
                         f"<td>{e(f['evidence'])}</td><td>{e(f['fix']) if f['fired'] else ''}</td></tr>")
        parts.append("</table>")
        parts.append("<h2>Numbers behind the verdict</h2><table class='kv'>")
        for k, v in verdict.get("numbers", {}).items():
            parts.append(f"<tr><td>{e(k)}</td><td>{e(_fmt(v, k))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No verdict was written (the run stopped before its first verdict interval).</p>")
    parts.append("<h2>Run</h2><table class='kv'>")
    meta0 = data.ranks.get(0, {})
    info = {
        "run dir": str(data.run_dir), "ranks": len(data.ranks) or None, "device": meta0.get("device_name"),
        "compute dtype": meta0.get("dtype"), "peak TFLOP/s per device": meta0.get("peak_tflops"),
        "peak source": meta0.get("peak_source"), "model FLOPs per token": meta0.get("flops_per_token"),
        "communication": "separated (DDP hook)" if meta0.get("comm_separated") else meta0.get("comm_note"),
        "steps recorded (rank 0)": len(data.steps.get(0, [])) or None,
    }
    for k, v in info.items():
        parts.append(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>")
    parts.append("</table>")
    for title, png in charts:
        parts.append(f"<h2>{e(title)}</h2>")
        if png:
            parts.append(f"<img src='{e(png)}' alt='{e(title)}'>")
    for note in system_notes:
        parts.append(f"<p><i>{e(note)}</i></p>")
    for name, table in data.profiler_tables.items():
        parts.append(f"<h2>torch.profiler: {e(name)}</h2><pre>{e(table)}</pre>")
    parts.extend(sections)
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: Path, sections: Sequence[str] = ()) -> Path:
    data = load_run(run_dir)
    out = RunDir(run_dir).report
    out.mkdir(exist_ok=True)
    charts: list[tuple[str, str]] = []
    notes: list[str] = []
    for title, fn in (("Loss", chart_loss), ("Throughput and MFU", chart_throughput),
                      ("Step phases", chart_phases), ("Stragglers", chart_stragglers)):
        png = fn(data, out)
        if png:
            charts.append((title, png))
        elif title == "Loss":
            notes.append("No loss curve: csv/metrics.csv is missing (logger.csv=false?).")
        elif title == "Stragglers" and len(data.ranks) > 1:
            notes.append("No straggler exchange recorded yet.")
    for title, png in chart_system(data, out):
        if png:
            charts.append((title, png))
        else:
            notes.append(title)
    return atomic_write_text(out / "index.html", render_html(data, charts, notes, sections))


def parse_args(argv: list[str]) -> Path:
    run_dir = None
    for arg in argv:
        if arg.startswith("run.dir="):
            run_dir = arg.split("=", 1)[1]
        elif not arg.startswith("-") and "=" not in arg and run_dir is None:
            run_dir = arg
        else:
            raise UserError(f"unknown argument {arg!r}; usage: python -m trainer.report run.dir=PATH")
    if not run_dir:
        raise UserError("usage: python -m trainer.report run.dir=PATH (the run directory, runs/<name>/<id>)")
    return Path(run_dir).expanduser().absolute()
