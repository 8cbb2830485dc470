"""The memory and time plan of a run, before anything starts.

    python -m trainer.plan [the same overrides as python -m trainer.train]

Prints, per device: parameters, gradients, optimizer state, activations and temporaries at the peak
of each phase (forward, backward, optimizer step) for the configured strategy, ZeRO stage, offload,
activation checkpointing, micro-batch and sequence length; a step-time estimate from FLOPs, the
device's dense peak and the communication volume; whether it fits `plan.device_memory_gb`; and the
cheapest configurations that fit. `python -m trainer.train` runs the same check before it launches
(`plan.check=error|warn|off`). How the numbers are made: trainer/planning/.
"""
from __future__ import annotations

import copy
import logging
import sys
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from trainer.config import (DATA_DERIVED, PlanConfig, StrategyConfig, complete_target_sections, compose_config,
                            import_target)
from trainer.errors import UserError, exit_on_user_error

log = logging.getLogger("trainer")
GIB = float(2**30)
CUDA_RESERVE = 1.0 * GIB  # CUDA context, NCCL and allocator slack: device memory the tensors cannot use
SCREEN_MARGIN = 0.5  # the quick bound must stay under this share of the device to skip the full trace


def plan_config(cfg: DictConfig, *, screen_only: bool = False):
    """The Plan of a composed config (planning/planner.py); `screen_only`: the quick upper bound only."""
    from trainer.planning.planner import Planner
    from trainer.planning.trace import screening_trace

    workload, hardware, layout = _workload(cfg), _hardware(cfg), _layout(cfg)
    planner = Planner(workload, hardware)
    if screen_only:
        trace = screening_trace(workload.make_net, workload.make_batch(workload.micro_batch), micro_batch=workload.micro_batch)
        planner._traces[workload.activation_checkpointing] = trace
    return planner.plan(layout), planner, layout


def check_before_launch(cfg: DictConfig) -> None:
    """plan.check=error: a configuration the plan says will not fit is a UserError naming what fits;
    warn: the same as a warning; off: nothing. A plan that cannot be made (an unusual model or data
    module) is a warning, never a reason not to launch."""
    p = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanConfig), cfg.plan))
    if p.check == "off":
        return
    try:
        # The plan needs the sections as the run will see them: train completes them later (prepare_run),
        # so the model's data-derived keys (vocab_size: null) are not there yet. A completed copy.
        cfg = copy.deepcopy(cfg)
        complete_target_sections(cfg)
        plan, planner, layout = plan_config(cfg, screen_only=True)
        if plan.hardware.memory_bytes is None or plan.peak_bytes <= SCREEN_MARGIN * plan.hardware.memory_bytes:
            return
        plan, planner, layout = plan_config(cfg)
        if plan.fits:
            return
        fixes = planner.recommend(layout, limit=3)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the plan is advice; a failure to make it must not block a run
        log.warning("memory plan: could not plan this configuration (%s: %s); launching without the check",
                    type(e).__name__, e)
        return
    message = _not_fitting(plan, fixes)
    if p.check == "error":
        raise UserError(message)
    log.warning(message)


def _not_fitting(plan, fixes) -> str:
    peak = plan.memory.peak
    msg = (f"the memory plan predicts {peak.total / GIB:.2f} GiB per device at the {plan.memory.peak_phase} peak "
           f"(parameters {peak.params / GIB:.1f}, gradients {peak.grads / GIB:.1f}, optimizer {peak.optimizer / GIB:.1f}, "
           f"activations {peak.activations / GIB:.1f}, temporaries {peak.temporaries / GIB:.1f}), more than the "
           f"{plan.hardware.memory_bytes / GIB:.2f} GiB available (plan.device_memory_gb).")
    if fixes:
        best = fixes[0]
        msg += (f" Fits: {' '.join(best.overrides())} ({best.peak_bytes / GIB:.2f} GiB"
                + (f", ~{best.time.step_s:.2f} s/step" if best.time.step_s else "") + ").")
    else:
        msg += " No strategy, activation checkpointing or micro-batch fits this world size: add devices (trainer.devices, trainer.num_nodes)."
    return msg + " Details: python -m trainer.plan <the same overrides>; plan.check=warn launches anyway."


# --------------------------------------------------------------------------- config -> typed inputs
def _on_gpu(cfg: DictConfig) -> bool:
    import torch

    acc = cfg.trainer.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _precision(cfg: DictConfig) -> str:
    p = cfg.trainer.precision
    return p if p != "auto" else ("bf16-mixed" if _on_gpu(cfg) else "32-true")


def _layout(cfg: DictConfig):
    from trainer.planning.memory import Layout

    s: StrategyConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StrategyConfig), cfg.strategy))
    half = _precision(cfg).startswith(("bf16", "16"))
    return Layout(strategy=s.name, world_size=cfg.trainer.devices * cfg.trainer.num_nodes, zero_stage=s.zero_stage,
                  offload_optimizer=s.offload_optimizer, offload_params=s.offload_params, overlap_comm=s.overlap_comm,
                  contiguous_gradients=s.contiguous_gradients, reduce_bucket_size=s.reduce_bucket_size,
                  stage3_prefetch_bucket_size=s.stage3_prefetch_bucket_size,
                  fsdp2_reshard_after_forward=s.fsdp2_reshard_after_forward,
                  param_dtype_bytes=2 if half and s.name == "fsdp2" else 4)


def _workload(cfg: DictConfig):
    import torch

    from trainer.build import instantiate
    from trainer.planning.planner import Workload

    data_cls = import_target("data", cfg.data._target_)
    data_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if not k.startswith("_")}
    datamodule: Any = None

    def built_datamodule():
        nonlocal datamodule
        if datamodule is None:
            from trainer.build import build_datamodule

            datamodule = build_datamodule(cfg.data)
        return datamodule

    fills = {}
    missing = [k for k in DATA_DERIVED if k in cfg.model and cfg.model[k] is None]
    if missing:
        known = data_cls.planned_attributes(**data_kwargs) if hasattr(data_cls, "planned_attributes") else {}
        for key in missing:
            fills[key] = known[key] if key in known else getattr(built_datamodule(), key)

    def make_net():
        return instantiate(cfg.model, **fills)

    def make_batch(batch_size: int):
        if hasattr(data_cls, "example_batch"):
            return data_cls.example_batch(**{**data_kwargs, "batch_size": batch_size})
        inputs, targets = next(iter(built_datamodule().train_dataloader()))
        return inputs[:batch_size], targets[:batch_size]

    with torch.device("meta"):
        flops = getattr(make_net(), "flops_per_token", None)
    return Workload(make_net=make_net, make_batch=make_batch, micro_batch=int(cfg.data.get("batch_size", 1)),
                    accumulate=cfg.trainer.accumulate_grad_batches, tokens_per_sample=int(cfg.data.get("seq_len") or 1),
                    flops_per_token=float(flops()) if callable(flops) else None, precision=_precision(cfg),
                    gradient_clip=cfg.trainer.gradient_clip_val, activation_checkpointing=cfg.trainer.activation_checkpointing)


def _hardware(cfg: DictConfig):
    import psutil
    import torch

    from trainer.observability.peaks import compute_dtype, peak_for
    from trainer.planning.devices import intranode_gbps, memory_gb
    from trainer.planning.planner import Hardware

    p: PlanConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanConfig), cfg.plan))
    on_gpu = _on_gpu(cfg)
    visible_gpu = on_gpu and torch.cuda.is_available()
    name = p.device or (torch.cuda.get_device_name(0) if visible_gpu else ("GPU (unknown)" if on_gpu else "cpu"))
    memory: Optional[float] = None
    if p.device_memory_gb is not None:
        memory = p.device_memory_gb * GIB
    elif visible_gpu and not p.device:
        memory = torch.cuda.get_device_properties(0).total_memory - CUDA_RESERVE
    elif on_gpu:
        table = memory_gb(name)
        memory = table * GIB - CUDA_RESERVE if table else None
    else:  # a CPU run: the host's memory, shared by the local ranks
        memory = psutil.virtual_memory().total / max(1, cfg.trainer.devices)
    peak = peak_for(name, compute_dtype(_precision(cfg)), cfg.observability.get("peak_tflops"))
    bandwidth = p.interconnect_gbps or intranode_gbps(name if on_gpu else None)
    if cfg.trainer.num_nodes > 1:
        bandwidth = min(bandwidth, p.internode_gbps)
    return Hardware(device_name=name, memory_bytes=memory, peak_flops=peak.flops, bandwidth_gbps=bandwidth, mfu=p.mfu,
                    on_gpu=on_gpu)


# --------------------------------------------------------------------------- printing
def format_plan(plan, fixes) -> str:
    w, lay, mem, t, hw = plan.workload, plan.layout, plan.memory, plan.time, plan.hardware
    lines = [
        f"plan: {plan.trace.n_params / 1e6:,.1f}M parameters | strategy {lay.name} on {lay.world_size} rank(s) | "
        f"micro-batch {w.micro_batch} x accumulate {w.accumulate} x {w.tokens_per_sample} tokens | {w.precision} | "
        f"activation checkpointing {w.activation_checkpointing}",
        f"device: {hw.device_name}, " + (f"{hw.memory_bytes / GIB:.1f} GiB usable" if hw.memory_bytes else "memory unknown")
        + (f", {hw.peak_flops / 1e12:.0f} TFLOP/s dense" if hw.peak_flops else ", peak FLOP/s unknown"),
        "",
        f"{'GiB per device':18}" + "".join(f"{p:>11}" for p in mem.phases),
    ]
    for key in ("params", "grads", "optimizer", "activations", "temporaries"):
        lines.append(f"  {key:16}" + "".join(f"{getattr(u, key) / GIB:11.3f}" for u in mem.phases.values()))
    lines.append(f"  {'total':16}" + "".join(f"{u.total / GIB:11.3f}" for u in mem.phases.values())
                 + f"   <- peak: {mem.peak_phase}")
    if mem.host:
        lines.append(f"  host (offloaded) {mem.host / GIB:11.3f}")
    f = mem.formula
    lines.append(f"  ZeRO formula (params + grads + optimizer, no activations or buffers): {f.total / GIB:.3f} GiB")
    lines.append("")
    comm = f"communication {t.comm_s:.3f} s ({t.comm_bytes / GIB:.2f} GiB per rank at {hw.bandwidth_gbps:.0f} GB/s)"
    if t.step_s is not None:
        lines.append(f"step time: ~{t.step_s:.3f} s (compute {t.compute_s:.3f} s at {hw.mfu:.0%} of peak, {comm})")
    else:
        lines.append(f"step time: unknown compute (no peak FLOP/s for {hw.device_name}: set plan.device or "
                     f"observability.peak_tflops); {comm}")
    if plan.fits is None:
        lines.append("fits: unknown (set plan.device_memory_gb)")
    else:
        lines.append(f"fits: {'yes' if plan.fits else 'NO'} ({plan.peak_bytes / GIB:.2f} of {hw.memory_bytes / GIB:.2f} GiB)")
    if fixes:
        lines.append("")
        lines.append("cheapest configurations that fit (estimated step time, peak memory per device):")
        for i, fix in enumerate(fixes, 1):
            step = f"~{fix.time.step_s:.3f} s/step" if fix.time.step_s is not None else "time n/a"
            lines.append(f"  {i}. {' '.join(fix.overrides())}   {fix.peak_bytes / GIB:.2f} GiB, {step}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    with exit_on_user_error():
        cfg = compose_config(args)
        plan, planner, layout = plan_config(cfg)
        fixes = planner.recommend(layout) if plan.hardware.memory_bytes else []
        print(format_plan(plan, fixes))


if __name__ == "__main__":
    main()
