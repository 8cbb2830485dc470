"""What the user sees: logging set-up, a rich progress bar, the start banner and the end summary."""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(stderr=False, highlight=False)


def setup_logging(logs: Path, rank: int) -> None:
    """Rank 0 logs INFO to the console; every rank logs to <logs>/rank<k>.log (the run dir's logs/)
    and sends warnings and errors to the console, so failures on any rank are seen."""
    logs.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(logs / f"rank{rank}.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    sh.setFormatter(logging.Formatter(f"[rank{rank}] %(levelname)s %(message)s" if rank else "%(message)s"))
    root.addHandler(sh)
    for noisy in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "DeepSpeed", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress_callbacks(enabled: bool, metrics_every: int = 1, redraws_per_s: int = 2) -> list:
    """The progress bar: redrawn `redraws_per_s` times a second, the logged losses read every
    `metrics_every` steps."""
    if not enabled:
        return []
    from pytorch_lightning.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        """Training runs by steps, not epochs: label the bar so and drop Lightning's version number.

        Lightning's Rich bar converts the progress-bar metrics to floats after every batch (for a
        tensor on the GPU, a synchronisation that drains the launch queue each step), updates its
        task after every batch and redraws from a thread 100 times a second (host time taken from
        the training loop). Here the count is updated at most as often as the bar is redrawn (twice
        a second; a redraw costs ~0.75 ms of CPU), and the losses are read once per `metrics_every`
        steps, on the batch after each logged one (train/loss is logged without prog_bar, so
        Lightning never converts it per batch).
        """

        _skip_metrics = False
        _next_update = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            read_metrics = batch_idx % metrics_every == 0
            last = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
            now = time.monotonic()
            if not (read_metrics or last) and now < self._next_update and self.train_progress_bar_id is not None:
                return
            self._next_update = now + 1 / redraws_per_s
            self._skip_metrics = not (read_metrics or last)
            try:
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            finally:
                self._skip_metrics = False

        def _update_metrics(self, trainer, pl_module) -> None:
            if not self._skip_metrics:
                super()._update_metrics(trainer, pl_module)

        def _get_train_description(self, current_epoch: int) -> str:
            return "train"

        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            loss = trainer.callback_metrics.get("train/loss")  # the last logged value (read here only)
            return {"train/loss": float(loss), **metrics} if loss is not None else metrics

    return [StepProgressBar(refresh_rate=redraws_per_s, leave=True)]


def print_start(run_dir: Path, run_id: str, run_name: str, strategy: str, net, datamodule, world: int, global_batch: int,
                precision: str, kernel_mode: str, resume) -> None:
    n_params = sum(p.numel() for p in net.parameters())
    stats = {}
    if hasattr(datamodule, "corpus_stats"):
        try:
            stats = datamodule.corpus_stats()
        except Exception:  # noqa: BLE001
            stats = {}
    console.print(f"[bold]run[/bold] {run_name}/{run_id}  dir: {run_dir}", soft_wrap=True)
    line = (
        f"model {type(net).__name__} {n_params / 1e6:.2f}M params | world {world} | global batch {global_batch}"
        f" | precision {precision} | strategy {strategy} | kernels {kernel_mode}"
    )
    console.print(line)
    if stats:
        console.print(
            f"data {stats.get('documents', '?')} docs, {stats.get('train_tokens', 0):,} train / "
            f"{stats.get('val_tokens', 0):,} val tokens, unigram entropy {stats.get('unigram_entropy_nats', float('nan')):.3f} nats"
        )
    console.print(f"resuming from step {resume.step}: {resume.path}" if resume else "starting from scratch")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_summary(summary: dict[str, Any], run_dir: Path, sync_hint: str | None) -> None:
    table = Table(title="run summary", show_header=False)
    rows = [
        ("steps", summary["steps"]),
        ("tokens seen", summary.get("tokens_seen")),
        ("wall time (s)", summary.get("wall_time_s")),
        ("tokens/s", summary.get("tokens_per_s")),
        ("final train loss", summary.get("final_train_loss")),
        ("final val loss", summary.get("final_val_loss")),
        ("unigram entropy (nats)", summary.get("unigram_entropy_nats")),
        ("stopped", summary.get("stopped")),
    ]
    for k, v in rows:
        if v is not None:
            table.add_row(k, _fmt(v))
    console.print(table)
    # Paths on lines of their own, never wrapped or cut ("…") at the terminal's width: users copy them.
    console.print(f"run dir: {run_dir}", soft_wrap=True, highlight=False)
    val, ent = summary.get("final_val_loss"), summary.get("unigram_entropy_nats")
    if val is not None and ent is not None and not math.isnan(val):
        console.print(f"val loss {val:.4f} vs unigram entropy {ent:.4f} nats ({'below' if val < ent else 'NOT below'})")
    if sync_hint:
        console.print(f"W&B ran offline; to upload: {sync_hint}", soft_wrap=True)
