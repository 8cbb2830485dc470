"""The end-of-run summary: what the console table, the manifest and the closing line report."""
from __future__ import annotations

from typing import Any, Optional


def run_summary(
    *,
    global_step: int,
    resumed_step: int,
    global_batch: int,
    seq_len: Optional[int],
    wall_s: float,
    metrics: dict[str, Any],
    unigram_entropy: Optional[float],
    stopped: Optional[str],
    last_checkpoint: Optional[int],
    checkpoint_save_s: list[float],
    preempt_signal_to_saved_s: Optional[float],
) -> dict[str, Any]:
    """Steps, tokens, throughput and losses of this session (resumed runs count from their checkpoint)."""
    scalars = {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    steps_done = global_step - resumed_step
    return {
        "steps": global_step,
        "steps_this_session": steps_done,
        "tokens_seen": global_step * global_batch * seq_len if seq_len else None,
        "samples_seen": global_step * global_batch,
        "wall_time_s": round(wall_s, 2),
        "tokens_per_s": round(steps_done * global_batch * seq_len / wall_s, 1) if seq_len and wall_s > 0 else None,
        "final_train_loss": scalars.get("train/loss"),
        "final_val_loss": scalars.get("val/loss"),
        "unigram_entropy_nats": unigram_entropy,
        "stopped": stopped or "completed",
        "last_checkpoint": last_checkpoint,
        "checkpoint_save_s": [round(x, 3) for x in checkpoint_save_s],
        "preempted_signal_to_saved_s": round(preempt_signal_to_saved_s, 3) if preempt_signal_to_saved_s is not None else None,
    }

