"""PerfMonitor: the always-on performance callback.

Per rank: step-phase times (timing.py), throughput and MFU, peak memory, written to
<perf_dir>/rank<k>.jsonl. Per node (local rank 0): NVML + psutil samples in a background
thread (sampler.py) to <perf_dir>/sys_<host>.jsonl. Every `straggler_every_n_steps` the
ranks all-gather one small vector of their window statistics; rank 0 names stragglers, and at
`verdict_every_n_steps` and at the end decides the bottleneck (verdict.py), logs everything
to the run's loggers on the loss's step axis, and writes <perf_dir>/verdict.json.

Cost: a few host-clock reads (or CUDA event records, read lazily) per batch, one buffered
JSON line per batch, and a tiny collective every N steps.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from trainer.config import ObservabilityConfig
from trainer.config.validate import validate_observability
from trainer.errors import UserError
from trainer.observability.comm import install_ddp_timing_hook
from trainer.observability.layout import PerfFiles
from trainer.observability.flops import measure_train_flops_per_sample, mfu
from trainer.observability.nvml import THROTTLE_REASONS
from trainer.observability.peaks import Peak, compute_dtype, peak_for, tf32_matmuls_enabled
from trainer.observability.sampler import SystemSampler
from trainer.observability.stats import WindowSummary, gpu_health, gpu_memory_fraction, summarize
from trainer.observability.timing import PHASES, CudaClock, HostClock, StepTimer, StepTimes
from trainer.observability.verdict import Evidence, GpuHealth, Thresholds, Verdict, decide, stragglers, write_verdicts

log = logging.getLogger("trainer.perf")

# One row per rank in the straggler/verdict exchange (floats; NaN = not available).
ROW = ("busy_s", "step_s", "data", "forward", "backward", "comm", "optimizer", "tokens_per_s", "samples_per_s",
       "mfu", "mem_frac", "alloc_retries", "node_rank", "gpu_index", "gpu_thermal", "gpu_power",
       "gpu_sm_clock", "gpu_sm_clock_max", "gpu_temp", "gpu_reasons", "peak_allocated_gb", "peak_reserved_gb")
_REASONS = list(THROTTLE_REASONS)
NAN = float("nan")


class PerfMonitor(pl.Callback):
    """Always-on step timing, throughput/MFU, NVML sampling, stragglers and the bottleneck verdict.

    perf_dir: the run's perf/ folder (None: keep everything in memory and the loggers only).
    flops_per_token: training FLOPs per token from the architecture (GPT.flops_per_token());
        None: counted once on the first batch with FlopCounterMode (3x forward).
    tokens_per_sample: sequence length for language models; None: samples only.
    log_every_n_steps: console line and logger metrics at this interval.
    **observability: ObservabilityConfig fields (nvml_interval_s, straggler_every_n_steps, …).
    """

    def __init__(self, perf_dir: Optional[Path | str] = None, flops_per_token: Optional[float] = None,
                 tokens_per_sample: Optional[int] = None, log_every_n_steps: int = 10, **observability: Any):
        names = {f.name for f in dataclasses.fields(ObservabilityConfig)}
        unknown = sorted(set(observability) - names)
        if unknown:
            raise UserError(f"unknown observability key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
        self.cfg = ObservabilityConfig(**observability)
        validate_observability(self.cfg)
        self.files = PerfFiles(Path(perf_dir)) if perf_dir is not None else None
        self.flops_per_token = flops_per_token
        self.tokens_per_sample = tokens_per_sample
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.thresholds = Thresholds(**{f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(Thresholds)})
        self.window: deque[StepTimes] = deque(maxlen=self.cfg.window_steps)
        self.since_log: list[StepTimes] = []
        self.verdicts: list[Verdict] = []
        self.final_verdict: Optional[Verdict] = None
        self.last_exchange: Optional[list[dict]] = None
        self.timer: Optional[StepTimer] = None
        self.sampler: Optional[SystemSampler] = None
        self.peak = Peak(None, "not started")
        self.flops_per_sample: Optional[float] = None
        self.flops_note = ""
        self.comm_note = ""
        self.host = socket.gethostname()
        self._records: Any = None
        self._stragglers_file: Any = None
        self._last_handled_step = -1
        self._first_step: Optional[int] = None
        self._warned: set[str] = set()
        self._device = torch.device("cpu")
        self._precision: Optional[str] = None
        self._compiled: Optional[bool] = None
        self._num_workers: Optional[int] = None
        self._gpu_index: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.cfg.enabled:
            return
        self._device = pl_module.device
        self._precision = str(getattr(trainer, "precision", "") or "") or None
        self._compiled = bool(getattr(pl_module, "compile", False))
        on_cuda = self._device.type == "cuda"
        clock = CudaClock(self._device) if on_cuda else HostClock()
        self.timer = StepTimer(clock)
        files = self.files
        if files is not None:
            files.dir.mkdir(parents=True, exist_ok=True)
        if trainer.local_rank == 0:
            self.sampler = SystemSampler(files.system_samples(self.host) if files else None,
                                         self.cfg.nvml_interval_s, self.host).start()
        if trainer.world_size > 1:
            self.comm_note = install_ddp_timing_hook(trainer.strategy.model, clock, self.timer.comm_bucket) or ""
        else:
            self.comm_note = "single process: no communication"
        device_name = torch.cuda.get_device_name(self._device) if on_cuda else "cpu"
        dtype = compute_dtype(str(trainer.precision), on_cuda and tf32_matmuls_enabled())
        self.peak = peak_for(device_name, dtype, self.cfg.peak_tflops)
        if self.flops_per_token is not None and self.tokens_per_sample:
            self.flops_per_sample = float(self.flops_per_token) * self.tokens_per_sample
            self.flops_note = "from the model architecture (6N + attention)"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
            self._gpu_index = self._nvml_index()
        if files is not None and self.cfg.write_step_records:
            self._records = open(files.rank_records(trainer.global_rank), "a", buffering=1 << 16)
            self._write(self._records, {
                "kind": "meta", "rank": trainer.global_rank, "world_size": trainer.world_size, "host": self.host,
                "node_rank": trainer.node_rank, "local_rank": trainer.local_rank, "device": str(self._device),
                "device_name": device_name, "gpu_index": self._gpu_index, "dtype": dtype,
                "peak_tflops": self.peak.tflops, "peak_source": self.peak.source,
                "flops_per_token": self.flops_per_token, "tokens_per_sample": self.tokens_per_sample,
                "comm_separated": not self.comm_note, "comm_note": self.comm_note,
            })
        if files is not None and trainer.global_rank == 0:
            self._stragglers_file = open(files.stragglers, "a", buffering=1)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = getattr(trainer, "train_dataloader", None)
        self._num_workers = getattr(loader, "num_workers", None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.timer is None:
            return
        self._consume(self.timer.poll(final=True))
        self.final_verdict = self._exchange_and_decide(trainer, pl_module, trainer.global_step, final=True)
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        for fh in (self._records, self._stragglers_file):
            if fh is not None:
                try:
                    fh.close()  # flushes: may find the disk full
                except OSError as e:
                    self._warn_once(f"closing {fh.name}", e)
        self._records = self._stragglers_file = None
        self.timer = None

    # ------------------------------------------------------------------ the step
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.timer is None:
            return
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        samples = int(inputs.shape[0]) if hasattr(inputs, "shape") and len(inputs.shape) else 1
        if self.flops_per_sample is None and not self.flops_note:
            self._measure_flops(pl_module, inputs)
        tokens = samples * self.tokens_per_sample if self.tokens_per_sample else None
        self.timer.batch_start(batch_idx, samples, tokens)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.timer is not None:
            self.timer.before_backward()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.timer is not None:
            self.timer.after_backward()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.timer is not None:
            self.timer.interrupt()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.timer is not None:
            self.timer.interrupt()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.timer is None:
            return
        step = trainer.global_step
        self.timer.batch_end(step)
        self._consume(self.timer.poll())
        if step == self._last_handled_step:  # a micro-batch inside gradient accumulation
            return
        self._last_handled_step = step
        if step % self.log_every_n_steps == 0:
            try:
                self._log_interval(trainer, step, logger_step(trainer))
            except Exception as e:  # monitoring never stops training
                self._warn_once("perf metrics not logged", e)
        if step % self.cfg.verdict_every_n_steps == 0:
            self._exchange_and_decide(trainer, pl_module, step, final=False)
        elif step % self.cfg.straggler_every_n_steps == 0:
            self._exchange(trainer, pl_module, step)

    def _warm(self, st: StepTimes) -> bool:
        """Past the warm-up steps of this session (a resumed run warms up again)."""
        if self._first_step is None:
            self._first_step = st.step
        return st.step - self._first_step >= self.cfg.warmup_steps

    def _consume(self, resolved: list[StepTimes]) -> None:
        for st in resolved:
            if self._records is not None:
                self._write(self._records, st.as_record())
            self.since_log.append(st)
            if self._warm(st):
                self.window.append(st)

    # ------------------------------------------------------------------ numbers
    def _rank_row(self, summary: WindowSummary, node_rank: int) -> list[float]:
        row = dict.fromkeys(ROW, NAN)
        row.update(busy_s=summary.busy_s, step_s=summary.step_s, tokens_per_s=summary.tokens_per_s,
                   samples_per_s=summary.samples_per_s, node_rank=node_rank,
                   mfu=mfu(self.flops_per_sample, summary.samples_per_s, self.peak.flops))
        row.update({p: summary.fractions[p] for p in PHASES})
        mem = self._memory()
        mem_fracs = [mem.get("reserved_frac")]
        if self.sampler is not None and self._gpu_index is not None:
            mem_fracs.append(gpu_memory_fraction(self._window_samples(), self._gpu_index))
        row.update(mem_frac=max((m for m in mem_fracs if m is not None), default=None),
                   alloc_retries=mem.get("alloc_retries", 0), peak_allocated_gb=mem.get("peak_allocated_gb"),
                   peak_reserved_gb=mem.get("peak_reserved_gb"))
        health = self._local_gpu_health()
        if health is not None:
            row.update(gpu_index=float(health.where.rsplit(" ", 1)[-1]), gpu_thermal=health.thermal_fraction,
                       gpu_power=health.power_fraction, gpu_sm_clock=health.sm_clock_mhz,
                       gpu_sm_clock_max=health.sm_clock_max_mhz, gpu_temp=health.temp_c,
                       gpu_reasons=float(sum(1 << _REASONS.index(r) for r in health.reasons if r in _REASONS)))
        return [NAN if v is None else float(v) for v in (row[k] for k in ROW)]

    def _window_samples(self) -> list[dict]:
        """This node's system samples taken during the current window."""
        if self.sampler is None:
            return []
        since = self.window[0].wall_time - self.cfg.nvml_interval_s if self.window else 0.0
        return self.sampler.recent(since=since)

    def _local_gpu_health(self) -> Optional[GpuHealth]:
        return gpu_health(self._window_samples(), self.host) if self.sampler is not None else None

    def _memory(self) -> dict:
        if self._device.type != "cuda":
            return {}
        total = torch.cuda.get_device_properties(self._device).total_memory
        stats = torch.cuda.memory_stats(self._device)
        return {
            "peak_allocated_gb": torch.cuda.max_memory_allocated(self._device) / 1024**3,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(self._device) / 1024**3,
            "reserved_frac": torch.cuda.max_memory_reserved(self._device) / total,
            "alloc_retries": int(stats.get("num_alloc_retries", 0)),
        }

    def _exchange(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> list[dict]:
        """All ranks: gather every rank's window row (one small all-gather); rank 0 records stragglers."""
        try:
            values = self._rank_row(summarize(self.window), trainer.node_rank)
        except Exception as e:  # still join the all-gather (the other ranks wait for it), with no numbers
            self._warn_once("perf statistics failed", e)
            values = [NAN] * len(ROW)
        row = torch.tensor(values, dtype=torch.float64)
        if trainer.world_size > 1:
            gathered = pl_module.all_gather(row.to(pl_module.device)).cpu().reshape(trainer.world_size, len(ROW))
        else:
            gathered = row.reshape(1, len(ROW))
        rows = [{k: (None if math.isnan(v) else v) for k, v in zip(ROW, r.tolist())} for r in gathered]
        self.last_exchange = rows
        if trainer.global_rank == 0:
            busy = [r["busy_s"] for r in rows]
            slow = stragglers(busy, self.cfg.straggler_margin)
            record = {"step": step, "t": self.window[-1].wall_time if self.window else None, "busy_s": busy,
                      "step_s": [r["step_s"] for r in rows], "stragglers": slow}
            if self._stragglers_file is not None:
                self._write(self._stragglers_file, record)
            metrics: dict[str, float] = {}
            for rank, r in enumerate(rows):
                if r["busy_s"] is not None:
                    metrics[f"perf/straggler/busy_s/rank{rank}"] = r["busy_s"]
                if r["step_s"] is not None:
                    metrics[f"perf/straggler/step_s/rank{rank}"] = r["step_s"]
                for key in ("peak_allocated_gb", "peak_reserved_gb"):
                    if r[key] is not None:
                        metrics[f"perf/mem/rank{rank}/{key}"] = r[key]
                if r["gpu_thermal"] is not None and r["node_rank"] != trainer.node_rank:
                    # Other nodes' GPUs: the summary of their worst GPU (full samples: their sys_<host>.jsonl).
                    node = f"gpu/node{int(r['node_rank'])}/worst"
                    for key, name in (("gpu_thermal", "thermal_throttled_frac"), ("gpu_power", "power_throttled_frac"),
                                      ("gpu_sm_clock", "sm_clock_mhz"), ("gpu_temp", "temp_c")):
                        if r[key] is not None:
                            metrics[f"{node}/{name}"] = r[key]
            if slow:
                metrics["perf/straggler/slowest_rank"] = slow[0][0]
                metrics["perf/straggler/slowdown"] = slow[0][1]
                log.warning("perf: straggler rank %d at step %d: %.0f%% slower than the other ranks (busy %s s/step)",
                            slow[0][0], step, 100 * slow[0][1], ", ".join(f"{b:.3f}" if b else "n/a" for b in busy))
            self._log_metrics(trainer, metrics, logger_step(trainer))
        return rows

    def _exchange_and_decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, final: bool) -> Optional[Verdict]:
        rows = self._exchange(trainer, pl_module, step)
        if trainer.global_rank != 0:
            return None
        try:
            verdict = decide(self._evidence(rows, step, trainer.node_rank), self.thresholds)
        except Exception as e:  # monitoring never stops training
            self._warn_once("perf verdict failed", e)
            return None
        if final:
            self.final_verdict = verdict
            self._report_final(trainer, verdict)
        else:
            self.verdicts.append(verdict)
            name = f"straggler rank {verdict.straggler_rank}" if verdict.straggler_rank is not None else verdict.bottleneck
            log.info(f"perf verdict @ step {step}: {name}: {verdict.evidence}")
        if self.files is not None:
            write_verdicts(self.files.verdict, self.final_verdict, self.verdicts)
        return verdict

    def _node_name(self, node_rank: int, own_node_rank: int) -> str:
        return self.host if node_rank == own_node_rank else f"node {node_rank}"

    def _evidence(self, rows: list[dict], step: int, trainer_node_rank: int) -> Evidence:
        from trainer.observability.stats import median

        def med(key: str) -> Optional[float]:
            return median(r[key] for r in rows)

        tokens = [r["tokens_per_s"] for r in rows]
        samples = [r["samples_per_s"] for r in rows]
        gpu = None
        for r in rows:
            if r["gpu_thermal"] is None:
                continue
            if gpu is None or max(r["gpu_thermal"], r["gpu_power"]) > max(gpu.thermal_fraction, gpu.power_fraction):
                mask = int(r["gpu_reasons"] or 0)
                gpu = GpuHealth(
                    where=self._node_name(int(r["node_rank"]), trainer_node_rank) + f" GPU {int(r['gpu_index'])}",
                    thermal_fraction=r["gpu_thermal"],
                    power_fraction=r["gpu_power"], sm_clock_mhz=r["gpu_sm_clock"], sm_clock_max_mhz=r["gpu_sm_clock_max"],
                    temp_c=r["gpu_temp"], reasons=[n for i, n in enumerate(_REASONS) if mask & (1 << i)],
                )
        mem = [r["mem_frac"] for r in rows if r["mem_frac"] is not None]
        return Evidence(
            step=step, world_size=len(rows), measured_steps=len(self.window), step_s=med("step_s"),
            fractions={p: med(p) for p in PHASES}, comm_note=self.comm_note,
            tokens_per_s=sum(tokens) if all(t is not None for t in tokens) else None,
            samples_per_s=sum(samples) if all(s is not None for s in samples) else None,
            mfu=med("mfu"), mfu_note=self.peak.source if self.peak.tflops is None else self.flops_note,
            device=self._device.type, mem_frac=max(mem) if mem else None,
            alloc_retries=int(sum(r["alloc_retries"] or 0 for r in rows)), gpu=gpu,
            busy_s=[r["busy_s"] for r in rows], num_workers=self._num_workers,
            precision=self._precision, compiled=self._compiled,
            cpu_native_bf16=_cpu_native_bf16() if self._device.type == "cpu" else None,
        )

    def _measure_flops(self, pl_module: pl.LightningModule, inputs: Any) -> None:
        net = getattr(pl_module, "net", None) or getattr(pl_module, "model", None) or pl_module
        if not isinstance(inputs, torch.Tensor):
            self.flops_note = "MFU skipped: the batch's inputs are not a tensor"
            return
        per_sample, note = measure_train_flops_per_sample(net, inputs)
        self.flops_per_sample, self.flops_note = per_sample, note
        if per_sample is None:
            log.info(f"perf: MFU skipped: {note}")

    # ------------------------------------------------------------------ output
    def _log_interval(self, trainer: pl.Trainer, step: int, log_step: int) -> None:
        steps, self.since_log = self.since_log, []
        mem = self._memory()
        if mem and self._records is not None:  # every rank keeps its own peak memory
            self._write(self._records, {"kind": "mem", "step": step, **mem})
        if trainer.global_rank != 0:
            return
        warm = {id(st) for st in self.window}
        s = summarize([st for st in steps if id(st) in warm] or steps)
        world = trainer.world_size
        metrics: dict[str, float] = {}
        if s.step_s is not None:
            metrics["perf/step_s"] = s.step_s
            for p in PHASES:
                if s.phase_s[p] is not None:
                    metrics[f"perf/{p}_s"] = s.phase_s[p]
                    metrics[f"perf/frac/{p}"] = s.fractions[p]
            metrics["perf/samples_per_s_per_rank"] = s.samples_per_s
            metrics["perf/samples_per_s"] = s.samples_per_s * world  # ranks run in lockstep
            if s.tokens_per_s is not None:
                metrics["perf/tokens_per_s_per_rank"] = s.tokens_per_s
                metrics["perf/tokens_per_s"] = s.tokens_per_s * world
            achieved = mfu(self.flops_per_sample, s.samples_per_s, self.peak.flops)
            if self.flops_per_sample:
                metrics["perf/tflops_per_rank"] = self.flops_per_sample * s.samples_per_s / 1e12
            if achieved is not None:
                metrics["perf/mfu"] = achieved
        for k, v in mem.items():
            metrics[f"perf/mem/{k}"] = v
        metrics.update(self._system_metrics())
        self._log_metrics(trainer, metrics, log_step)
        if s.step_s is not None:
            log.info(self._console_line(step, s, metrics.get("perf/mfu")))

    def _console_line(self, step: int, s: WindowSummary, achieved: Optional[float]) -> str:
        short = {"data": "data", "forward": "fwd", "backward": "bwd", "comm": "comm", "optimizer": "opt"}
        phases = " ".join(f"{short[p]} {100 * s.fractions[p]:.0f}%" for p in PHASES if s.fractions[p] is not None)
        tput = f"{s.tokens_per_s:,.0f} tok/s/rank" if s.tokens_per_s is not None else f"{s.samples_per_s:,.1f} samples/s/rank"
        mfu_text = f"MFU {100 * achieved:.1f}%" if achieved is not None else "MFU n/a"
        return f"perf step {step}: {1000 * s.step_s:.1f} ms/step | {tput} | {mfu_text} | {phases}"

    def _system_metrics(self) -> dict[str, float]:
        if self.sampler is None or not self.sampler.samples:
            return {}
        sample = self.sampler.samples[-1]
        out = {f"sys/{self.host}/{k}": v for k, v in sample["sys"].items()}
        for g in sample.get("gpus", []):
            for k, v in g.items():
                if k == "throttle":
                    out[f"gpu/{self.host}/{g['index']}/throttled"] = float(bool(v))
                elif isinstance(v, (int, float)) and k != "index":
                    out[f"gpu/{self.host}/{g['index']}/{k}"] = float(v)
        return out

    def _log_metrics(self, trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=step)
            except Exception as e:  # a logger failing never stops training
                log.warning("perf metrics not logged to %s: %s", type(logger).__name__, e)

    def _report_final(self, trainer: pl.Trainer, verdict: Verdict) -> None:
        summary = {"perf/verdict": verdict.bottleneck, "perf/verdict_evidence": verdict.evidence,
                   "perf/verdict_fix": verdict.fix}
        if verdict.straggler_rank is not None:
            summary["perf/straggler_rank"] = verdict.straggler_rank
        for k, v in verdict.numbers.items():
            if isinstance(v, (int, float)) and v is not None:
                summary[f"perf/final/{k}"] = v
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    logger.experiment.summary.update(summary)
                except Exception as e:  # W&B trouble never stops training
                    log.warning("verdict not written to the W&B summary: %s", e)
        print_verdict_table(verdict)

    def _nvml_index(self) -> Optional[int]:
        """NVML index of this rank's GPU (CUDA ordinals differ from NVML's under CUDA_VISIBLE_DEVICES)."""
        from trainer.observability.nvml import NvmlReader

        try:
            uuid = str(torch.cuda.get_device_properties(self._device).uuid)
        except Exception:
            return None
        reader = self.sampler.nvml if self.sampler is not None else NvmlReader()
        try:
            return reader.index_of_uuid(uuid) if reader.available else None
        finally:
            if self.sampler is None:
                reader.close()

    def _warn_once(self, what: str, error: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s: %s: %s (training continues)", what, type(error).__name__, error, exc_info=error)

    @staticmethod
    def _write(fh: Any, record: dict) -> None:
        fh.write(json.dumps(record) + "\n")


def logger_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs this batch's loss under (it counts batches that stepped, and
    increments after logging), so perf metrics share the loss's x-axis in W&B and the CSV."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


def print_verdict_table(verdict: Verdict) -> None:
    """The end-of-run table: every rule, whether it fired, its evidence and the fix."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Performance verdict (step {verdict.step}): {verdict.headline.split(':')[0]}")
    table.add_column("rule")
    table.add_column("fired")
    table.add_column("evidence")
    table.add_column("suggested fix")
    for f in verdict.findings:
        table.add_row(f.rule, "YES" if f.fired else "-", f.evidence, f.fix if f.fired else "")
    console = Console(width=max(120, int(os.environ.get("COLUMNS", 0) or 0)))
    console.print(table)
    console.print(f"[bold]bottleneck[/bold]: {verdict.headline}")


def _cpu_native_bf16() -> Optional[bool]:
    """Whether this CPU runs bf16 natively (AVX512-BF16 / AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a private torch call: unknown is fine
        return None
