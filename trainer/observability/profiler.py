"""`profiler=torch`: a torch.profiler trace of a chosen window of training steps.

Writes <out_dir>/trace_rank<k>.json (Chrome trace: open in chrome://tracing or
https://ui.perfetto.dev) and top_kernels_rank<k>.txt (the ops/kernels with the most self time).
Profiling costs a lot while active, so it covers only `num_steps` optimizer steps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

log = logging.getLogger("trainer.perf")


class StepWindowProfiler(pl.Callback):
    def __init__(self, out_dir: Path | str, *, start_step: int, num_steps: int, record_shapes: bool,
                 profile_memory: bool, with_stack: bool, row_limit: int):
        """out_dir: the run's profiler/ folder; the settings are the `profiler` section (schema: ProfilerConfig)."""
        from trainer.errors import UserError

        if start_step < 1 or num_steps < 1:
            raise UserError(f"profiler.start_step and profiler.num_steps must be >= 1, got {start_step} and {num_steps}")
        self.out_dir = Path(out_dir)
        self.start_step, self.num_steps, self.row_limit = int(start_step), int(num_steps), int(row_limit)
        self.options = dict(record_shapes=record_shapes, profile_memory=profile_memory, with_stack=with_stack)
        self._prof: Optional[torch.profiler.profile] = None
        self.trace_path: Optional[Path] = None
        self.table_path: Optional[Path] = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # global_step counts finished optimizer steps: the batch now starting belongs to step global_step + 1.
        if self._prof is None and trainer.global_step + 1 == self.start_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities, **self.options)
            self._prof.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._prof is not None and trainer.global_step >= self.start_step + self.num_steps - 1:
            self._finish(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prof is not None:  # training ended inside the window
            self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        prof, self._prof = self._prof, None
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        self.trace_path = self.out_dir / f"trace_rank{rank}.json"
        prof.export_chrome_trace(str(self.trace_path))
        sort_by = "self_cuda_time_total" if pl_module.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=self.row_limit)
        self.table_path = self.out_dir / f"top_kernels_rank{rank}.txt"
        header = (f"torch.profiler: steps {self.start_step}..{self.start_step + self.num_steps - 1}, rank {rank}, "
                  f"sorted by {sort_by}\n")
        self.table_path.write_text(header + table + "\n")
        if rank == 0:
            log.info("profiler: Chrome trace %s, top kernels %s", self.trace_path, self.table_path)
