"""Build everything from a validated config and fit: the recipe every rank runs.

`python -m trainer.fit <run_dir>/config.yaml` is how local ranks start (under torchrun,
from the frozen file); `trainer.train` calls `run_fit` directly for one process and under
external launchers.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError, exit_on_user_error

log = logging.getLogger("trainer")
REQUEUE_EXIT = 124  # SLURM/launcher scripts requeue on this code (preempted, checkpoint saved)


def run_fit(cfg: DictConfig, run_dir: Path, run_id: str, extra_callbacks: Sequence[Any] = ()) -> int:
    """Train; returns the process exit code (0 done, REQUEUE_EXIT preempted).

    extra_callbacks run after the framework's own (benchmarks pass their step clocks here).
    """
    import pytorch_lightning as pl
    import torch

    from trainer import ops
    from trainer.checkpoint.callback import CheckpointManager
    from trainer.checkpoint.resume import pick_resume_checkpoint
    from trainer.distributed.env import detect, local_world_size
    from trainer.tracking import console
    from trainer.tracking.loggers import build_loggers, wandb_sync_hint
    from trainer.tracking.manifest import update_manifest, write_json

    _quiet_library_warnings()
    proc = detect()
    is_zero = proc.rank == 0
    console.setup_logging(run_dir, proc.rank)
    _fit_elastic_world(cfg, proc.world_size)
    t, s = cfg.trainer, cfg.strategy
    on_gpu = _on_gpu(t.accelerator)
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    if not on_gpu and precision != "32-true" and not precision.startswith("bf16"):
        raise UserError(f"trainer.precision={precision} needs a GPU; use 32-true or bf16-mixed on CPU")
    if not on_gpu:
        torch.set_num_threads(t.num_threads or max(1, (os.cpu_count() or 1) // max(1, local_world_size())))
    from trainer.distributed.preflight import preflight_checks

    preflight_checks(t.devices, t.num_nodes, int(cfg.data.get("num_workers", 0) or 0))
    if s.name == "single" and proc.world_size > 1:
        raise UserError(f"launched with {proc.world_size} processes but strategy=single; use strategy=ddp (or fsdp, deepspeed_*)")

    from trainer.distributed.process import prepare_rank

    prepare_rank(run_dir=run_dir, cache_dir=cfg.paths.cache_dir, on_gpu=on_gpu)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    mode = ops.set_kernel_mode(cfg.kernels, cache_dir=os.path.expanduser(cfg.paths.cache_dir))

    datamodule = _instantiate(cfg.data, "data")
    datamodule.prepare_data()  # every rank: one builds the token shards under a lock, the others wait
    datamodule.setup("fit")
    if is_zero and hasattr(getattr(datamodule, "tokenizer", None), "save_pretrained"):  # evaluate/export reload it
        datamodule.tokenizer.save_pretrained(run_dir / "tokenizer")
    net, model_spec = _build_model(cfg.model, datamodule)
    if is_zero:
        write_json(run_dir / "model.json", model_spec)  # what export/generate rebuild the net from
    module = _build_module(cfg, net)

    world = t.devices * t.num_nodes
    global_batch = int(cfg.data.get("batch_size", 1)) * t.accumulate_grad_batches * world
    strategy = _strategy(cfg, run_dir, on_gpu, precision, net)
    ckpt_root = run_dir / "checkpoints"
    preemption = _preemption()
    checkpointer = CheckpointManager(
        root=ckpt_root,
        every_n_steps=cfg.checkpoint.every_n_steps,
        keep_last=cfg.checkpoint.keep_last,
        checksum=cfg.checkpoint.checksum,
        save_final=cfg.checkpoint.save_final,
        stop_after_steps=cfg.run.stop_after_steps,
        sharded=s.name == "deepspeed" or (s.name == "fsdp" and s.fsdp_state_dict == "sharded"),
        meta={
            "run_id": run_id,
            "strategy": s.name,
            "zero_stage": s.zero_stage if s.name == "deepspeed" else None,
            "global_batch": global_batch,
            "accumulate_grad_batches": t.accumulate_grad_batches,
            "data_fingerprint": getattr(datamodule, "fingerprint", None),
        },
        stop_requested=preemption.agreed,
        debug_pause_in_save_s=float(cfg.checkpoint.get("debug_pause_in_save_s", 0.0)),
    )
    # Observability first: its batch-end mark then lands before a checkpoint save, which it
    # leaves out of the step timing instead of counting it as optimizer time.
    callbacks: list[Any] = [*_observability_callbacks(cfg, run_dir, net), checkpointer,
                            _keep_preemption_handlers(preemption),
                            *console.progress_callbacks(t.progress_bar and is_zero, metrics_every=t.log_every_steps)]
    if proc.world_size > 1:
        from trainer.distributed.agreement import RankAgreementCheck

        # launcher.local_addr / rdzv_is_host differ per node by design (multi-node torchrun): not compared
        shared = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "launcher"}
        callbacks.append(RankAgreementCheck(shared))
    if s.name == "fsdp" and t.gradient_clip_val:
        from trainer.distributed.fsdp import fsdp_grad_clip_callback

        callbacks.append(fsdp_grad_clip_callback(t.gradient_clip_val))
    from trainer.lifecycle.data_check import wandb_callbacks

    callbacks += [*wandb_callbacks(run_dir), *extra_callbacks]
    loggers = build_loggers(
        run_dir,
        run_name=cfg.run.name,
        csv=cfg.logger.csv,
        wandb=cfg.logger.wandb,
        wandb_mode=cfg.logger.wandb_mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        tags=list(cfg.logger.tags),
        config={"config": OmegaConf.to_container(cfg, resolve=True), "run_id": run_id},
    )

    trainer = pl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        # DeepSpeed clips inside its engine (JSON), FSDP in a callback (Lightning's FSDP plugin cannot).
        gradient_clip_val=t.gradient_clip_val if s.name in ("single", "ddp") else None,
        val_check_interval=t.val_every_steps * t.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_steps,
        use_distributed_sampler=False,  # the data module samples by (seed, step, slot)
        enable_checkpointing=False,  # ours: atomic, verified (trainer/checkpoint)
        enable_progress_bar=t.progress_bar and is_zero,
        enable_model_summary=False,
        logger=loggers,
        callbacks=callbacks,
        plugins=_cluster_plugins(proc.launcher),
        default_root_dir=str(run_dir),
        deterministic=t.deterministic,
    )

    resume = pick_resume_checkpoint(ckpt_root, cfg.run.resume, cfg.run.resume_from, announce=is_zero)
    if resume is None:  # fine-tuning starts from model.init_from; a resumed run from its checkpoint
        from trainer.models.llama_hf import apply_init_from

        apply_init_from(net, model_spec)
    resume_state = None
    if resume:  # another world size or strategy: convert (DeepSpeed universal) or refuse, before any step
        from trainer.checkpoint.reshard import plan_resume

        plan = plan_resume(resume, strategy=s.name, zero_stage=s.zero_stage if s.name == "deepspeed" else None,
                           world_size=world, global_batch=global_batch)
        resume_state = plan.state_path
        if plan.load_universal:
            strategy.config.setdefault("checkpoint", {})["load_universal"] = True
    if is_zero:
        console.print_start(run_dir, run_id, cfg, net, datamodule, world, global_batch, precision, mode, resume)
        update_manifest(run_dir, kernels=ops_status(mode), resumed_from=str(resume.path) if resume else None,
                        data=_corpus_stats(datamodule), data_fingerprint=getattr(datamodule, "fingerprint", None))
    started = time.time()
    watchdog = _peer_watchdog(s.timeout_s)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_state) if resume_state else None, weights_only=True)
    except Exception:
        if watchdog is not None:
            watchdog.check_after_failure()  # the cut-off side ends here, naming the lost peer
        raise
    finally:
        if watchdog is not None:
            watchdog.stop()
    wall = time.time() - started

    code = REQUEUE_EXIT if checkpointer.stopped_early == "preempted" else 0
    if is_zero and cfg.logger.log_checkpoint and checkpointer.stopped_early is None and checkpointer.last_saved_step:
        from trainer.tracking.artifacts import log_checkpoint_artifact

        log_checkpoint_artifact(loggers, run_dir, ckpt_root, checkpointer.last_saved_step)
    if code == REQUEUE_EXIT:
        _leave_requeue_marker()
    if is_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        seq_len = cfg.model.get("seq_len")
        steps_done = trainer.global_step - (resume.step if resume else 0)
        summary = {
            "steps": trainer.global_step,
            "steps_this_session": steps_done,
            "tokens_seen": trainer.global_step * global_batch * seq_len if seq_len else None,
            "samples_seen": trainer.global_step * global_batch,
            "wall_time_s": round(wall, 2),
            "tokens_per_s": round(steps_done * global_batch * seq_len / wall, 1) if seq_len and wall > 0 else None,
            "final_train_loss": metrics.get("train/loss"),
            "final_val_loss": metrics.get("val/loss"),
            "unigram_entropy_nats": _corpus_stat(datamodule, "unigram_entropy_nats"),
            "stopped": checkpointer.stopped_early or "completed",
            "last_checkpoint": checkpointer.last_saved_step,
            "checkpoint_save_s": [round(x, 3) for x in checkpointer.save_seconds],
            "preempted_signal_to_saved_s": round(checkpointer.preempt_saved_at - preemption.signalled_at, 3)
            if checkpointer.stopped_early == "preempted" and preemption.signalled_at and checkpointer.preempt_saved_at else None,
        }
        update_manifest(run_dir, end_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), summary=summary)
        console.print_summary(summary, run_dir, wandb_sync_hint(run_dir))
    _shutdown_distributed()
    return code


def ops_status(mode: str) -> dict[str, Any]:
    from trainer import ops

    status = getattr(ops, "kernel_status", None)
    return {"mode": mode, **(status() if status else {})}


def _on_gpu(accelerator: str) -> bool:
    import torch

    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu")
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def _instantiate(node: DictConfig, section: str, **kwargs):
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:  # Hydra wraps constructor errors; surface UserErrors raised inside
        cause = e
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise


def _build_model(node: DictConfig, datamodule):
    fills = {}
    from trainer.config import DATA_DERIVED

    for key in DATA_DERIVED:
        if key in node and node[key] is None and getattr(datamodule, key, None) is not None:
            fills[key] = getattr(datamodule, key)
    vocab = getattr(datamodule, "vocab_size", None)
    if node.get("vocab_size") is not None and vocab is not None and node.vocab_size < vocab:
        raise UserError(f"model.vocab_size={node.vocab_size} is smaller than the tokenizer's vocabulary ({vocab}); set model.vocab_size=null")
    spec = {**OmegaConf.to_container(node, resolve=True), **fills}
    return _instantiate(node, "model", **fills), spec


def _build_module(cfg: DictConfig, net):
    if cfg.get("module") is not None:
        return _instantiate(cfg.module, "module", net=net)
    from trainer.module import TrainModule

    o = cfg.optim
    return TrainModule(
        net,
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=list(o.betas),
        eps=o.eps,
        warmup_steps=o.warmup_steps,
        schedule=o.schedule,
        min_lr_ratio=o.min_lr_ratio,
        max_steps=cfg.trainer.max_steps,
        compile=cfg.trainer.compile,
    )


def _strategy(cfg: DictConfig, run_dir: Path, on_gpu: bool, precision: str, net):
    from trainer.distributed.fsdp import repeated_block_types
    from trainer.distributed.strategies import build_strategy, deepspeed_json, save_deepspeed_json

    s, t = cfg.strategy, cfg.trainer
    ds = None
    if s.name == "deepspeed":
        ds = deepspeed_json(
            zero_stage=s.zero_stage,
            micro_batch_size=int(cfg.data.get("batch_size", 1)),
            accumulate=t.accumulate_grad_batches,
            gradient_clip=t.gradient_clip_val,
            precision=precision,
            offload_optimizer=s.offload_optimizer,
            offload_params=s.offload_params,
            overlap_comm=s.overlap_comm,
            contiguous_gradients=s.contiguous_gradients,
            reduce_bucket_size=s.reduce_bucket_size,
            allgather_bucket_size=s.allgather_bucket_size,
            stage3_prefetch_bucket_size=s.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=s.stage3_param_persistence_threshold,
            overrides=OmegaConf.to_container(s.deepspeed_config, resolve=True),
        )
        if int(os.environ.get("RANK", "0")) == 0:
            save_deepspeed_json(ds, run_dir)
    return build_strategy(
        s.name,
        on_gpu=on_gpu,
        timeout_s=s.timeout_s,
        zero_stage=s.zero_stage,
        deepspeed_json=ds,
        fsdp_sharding=s.fsdp_sharding,
        fsdp_state_dict=s.fsdp_state_dict,
        fsdp_wrap_types=repeated_block_types(net),
    )


def _observability_callbacks(cfg: DictConfig, run_dir: Path, net) -> list:
    """PerfMonitor (always on unless observability.enabled=false), the torch profiler window
    (profiler=torch) and the debug straggler delay (debug=straggler)."""
    from trainer.observability import PerfMonitor, StepWindowProfiler, StragglerDelay

    callbacks: list[Any] = []
    debug = cfg.get("debug") or {}
    if debug.get("straggler_rank") is not None:
        callbacks.append(StragglerDelay(debug.straggler_rank, debug.get("straggler_delay_s", 0.2)))
    obs = OmegaConf.to_container(cfg.observability, resolve=True)
    if obs.get("enabled", True):
        flops = getattr(net, "flops_per_token", None)
        callbacks.append(PerfMonitor(
            run_dir=run_dir,
            flops_per_token=float(flops()) if callable(flops) else None,
            tokens_per_sample=cfg.data.get("seq_len"),  # language models; None: count samples only
            log_every_n_steps=cfg.trainer.log_every_steps,
            **obs,
        ))
    if cfg.get("profiler") is not None:
        callbacks.append(StepWindowProfiler(run_dir, **OmegaConf.to_container(cfg.profiler, resolve=True)))
    return callbacks


def _cluster_plugins(launcher: str | None) -> list:
    if launcher != "slurm":
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # Our preemption flag saves through the atomic store; the sbatch script requeues on REQUEUE_EXIT.
    return [SLURMEnvironment(auto_requeue=False)]


def _preemption():
    from trainer.distributed.preemption import PreemptionFlag

    return PreemptionFlag().install()


def _keep_preemption_handlers(flag):
    from trainer.distributed.preemption import keep_handlers_callback

    return keep_handlers_callback(flag)


def _corpus_stats(datamodule) -> dict:
    stats = getattr(datamodule, "corpus_stats", None)
    try:
        return dict(stats()) if stats else {}
    except Exception:  # noqa: BLE001 - a summary line is not worth a crash
        return {}


def _corpus_stat(datamodule, key: str):
    return _corpus_stats(datamodule).get(key)


def _quiet_library_warnings() -> None:
    import warnings

    # Advice that does not apply to how this framework launches and logs.
    for pattern in (".*srun.*command is available.*", ".*LeafSpec.*", ".*anonymous setting.*",
                    ".*does not have many workers.*", ".*tensorboardX.*",
                    ".*dataloader is not resumable.*", ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _fit_elastic_world(cfg: DictConfig, world_size: int) -> None:
    """Elastic restart with fewer nodes (torchrun --nnodes=MIN:MAX): fewer nodes, more accumulation, same global batch."""
    from omegaconf import open_dict

    from trainer.distributed.elastic import elastic_layout

    t = cfg.trainer
    launcher = cfg.get("launcher") or {}
    nodes, accumulate = elastic_layout(devices=t.devices, num_nodes=t.num_nodes, accumulate=t.accumulate_grad_batches,
                                       world_size=world_size, min_nodes=launcher.get("min_nodes"))
    if (nodes, accumulate) != (t.num_nodes, t.accumulate_grad_batches):
        log.warning("elastic: %d of %d nodes in this world; trainer.accumulate_grad_batches %d -> %d keeps the global batch",
                    nodes, t.num_nodes, t.accumulate_grad_batches, accumulate)
        with open_dict(cfg):
            t.num_nodes, t.accumulate_grad_batches = nodes, accumulate


def _peer_watchdog(timeout_s: float):
    from trainer.distributed.watchdog import watchdog_for_this_node

    watchdog = watchdog_for_this_node(os.environ, timeout_s)
    return watchdog.start() if watchdog else None


def _leave_requeue_marker() -> None:
    """Tell the batch script this job wants a requeue, in a file (every rank, before any exits).

    srun --kill-on-bad-exit kills the other tasks as soon as the first one exits 124, often while they
    are still exiting, and srun then reports the signal, not 124; the marker survives that.
    """
    marker = os.environ.get("TRAINER_REQUEUE_MARKER")
    if marker:
        try:
            Path(marker).touch()
        except OSError as e:
            log.warning("could not leave the requeue marker %s (%s): the batch script relies on exit code %d", marker, e, REQUEUE_EXIT)


def _shutdown_distributed() -> None:
    # Destroying the process group before exit avoids an occasional abort at interpreter shutdown.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Entry for local ranks: python -m trainer.fit <frozen config.yaml>."""
    from trainer.tracking.run_dir import load_frozen

    args = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        if len(args) != 1:
            raise UserError("usage: python -m trainer.fit RUN_DIR/config.yaml")
        path = Path(args[0]).absolute()
        cfg = load_frozen(path)
        run_id = os.environ.get("TRAINER_RUN_ID") or path.parent.name
        code = run_fit(cfg, path.parent, run_id)
    sys.exit(code)


if __name__ == "__main__":
    main()
