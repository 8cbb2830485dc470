"""The recipe every rank runs: build everything from a validated config, then fit.

`python -m trainer.fit <run_dir>/config.yaml` is how local ranks start (under torchrun, from the
frozen file); `trainer.train` calls `run_fit` directly for one process and under external
launchers. The pieces come from trainer/build.py; what a strategy implies, from its plan.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig

from trainer.errors import UserError, exit_on_user_error

log = logging.getLogger("trainer")


def run_fit(cfg: DictConfig, run_dir: Path, run_id: str, extra_callbacks: Sequence[Any] = ()) -> int:
    """Train; returns the process exit code (0 done, REQUEUE_EXIT preempted).

    extra_callbacks run after the framework's own (benchmarks pass their step clocks here).
    """
    import pytorch_lightning as pl

    from trainer import build, ops
    from trainer.checkpoint.resume import pick_resume_checkpoint
    from trainer.checkpoint.storage import storage_errors
    from trainer.distributed.env import detect, local_world_size
    from trainer.distributed.preemption import REQUEUE_EXIT, PreemptionFlag, leave_requeue_marker, requeue_slurm_job
    from trainer.distributed.preflight import preflight_checks
    from trainer.distributed.process import prepare_rank
    from trainer.tracking import console, run_lock
    from trainer.tracking.loggers import log_summary, wandb_sync_hint
    from trainer.tracking.manifest import update_manifest
    from trainer.tracking.run_dir import RunDir
    from trainer.tracking.summary import run_summary

    _quiet_library_warnings()
    preemption = PreemptionFlag().install()  # before the slow start-up: SIGTERM there ends this rank at once
    proc, rd = detect(), RunDir(run_dir)
    is_zero = proc.rank == 0
    console.setup_logging(rd.logs, proc.rank)
    if is_zero:  # another job taking the run dir ends this one at its next step (tracking/run_lock.py)
        watch = run_lock.watch(rd.lock, cfg.run.lock_stale_after_s)
        preemption.lost_run_dir = watch.lost if watch is not None else None
    build.fit_elastic_world(cfg, proc.world_size)
    device = build.resolve_device(cfg.trainer)
    build.set_cpu_threads(cfg.trainer, device, local_world_size())
    preflight_checks(cfg.trainer.devices, cfg.trainer.num_nodes, int(cfg.data.get("num_workers", 0) or 0))
    prepare_rank(logs=rd.logs, cache_dir=cfg.paths.cache_dir, on_gpu=device.on_gpu)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    kernel_mode = ops.set_kernel_mode(cfg.kernels, cache_dir=os.path.expanduser(cfg.paths.cache_dir), compiled=cfg.trainer.compile)
    datamodule = build.build_datamodule(cfg.data)
    if is_zero and hasattr(getattr(datamodule, "tokenizer", None), "save_pretrained"):  # evaluate/export reload it
        datamodule.tokenizer.save_pretrained(rd.tokenizer)
    net, spec = build.build_model(cfg.model, datamodule)
    plan = build.build_plan(cfg, net, device, proc.world_size)
    if is_zero:
        build.save_run_files(rd, spec, plan)
    module = build.build_module(cfg, net, plan)
    checkpointer = build.build_checkpointer(cfg, rd, run_id, plan, datamodule, stop_requested=preemption.agreed)
    callbacks = build.build_callbacks(cfg, rd, net, plan, checkpointer, preemption, is_zero=is_zero,
                                      world_size=proc.world_size, extra=extra_callbacks)
    trainer = build.build_trainer(cfg.trainer, plan, device, loggers=build.build_loggers(cfg, rd, run_id),
                                  callbacks=callbacks, run_dir=rd, launcher=proc.launcher, is_zero=is_zero)

    world, global_batch = cfg.trainer.devices * cfg.trainer.num_nodes, build.global_batch(cfg)
    resume = pick_resume_checkpoint(rd.checkpoints, cfg.run.resume, cfg.run.resume_from, announce=is_zero)
    resume_state = plan.resume_state(resume, world_size=world, global_batch=global_batch) if resume else None
    if resume is None:  # fine-tuning starts from model.init_from; a resumed run from its own checkpoint
        build.apply_init_from(net, spec)
    if is_zero:
        console.print_start(rd.path, run_id, cfg.run.name, plan.name, net, datamodule, world, global_batch,
                            device.precision, kernel_mode, resume)
        import torch

        update_manifest(rd.path, kernels={"mode": kernel_mode, **ops.kernel_status()}, resumed_from=str(resume.path) if resume else None,
                        data=_corpus_stats(datamodule), data_fingerprint=getattr(datamodule, "fingerprint", None),
                        cpu_threads=None if device.on_gpu else torch.get_num_threads())  # CPU sums depend on it
    started = time.time()
    with _peer_watchdog(cfg.strategy.timeout_s), storage_errors(rd.checkpoints, lambda: checkpointer.storage_error):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_state) if resume_state else None, weights_only=True)
    wall = time.time() - started

    code = REQUEUE_EXIT if checkpointer.stopped_early == "preempted" else 0
    if code == REQUEUE_EXIT:
        leave_requeue_marker()
        requeue_slurm_job(proc.rank)
    if is_zero:
        preempted = checkpointer.stopped_early == "preempted" and preemption.signalled_at and checkpointer.preempt_saved_at
        summary = run_summary(
            global_step=trainer.global_step, resumed_step=resume.step if resume else 0, global_batch=global_batch,
            seq_len=cfg.model.get("seq_len"), wall_s=wall, metrics=dict(trainer.callback_metrics),
            unigram_entropy=_corpus_stats(datamodule).get("unigram_entropy_nats"), stopped=checkpointer.stopped_early,
            last_checkpoint=checkpointer.last_saved_step, checkpoint_save_s=checkpointer.save_seconds,
            preempt_signal_to_saved_s=checkpointer.preempt_saved_at - preemption.signalled_at if preempted else None,
        )
        update_manifest(rd.path, end_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), summary=summary)
        if any(getattr(lg, "log_checkpoint", False) for lg in trainer.loggers) and checkpointer.stopped_early is None \
                and checkpointer.last_saved_step:  # after the summary: the artifact's val_loss (for `best`) is read from it
            from trainer.tracking.artifacts import log_checkpoint_artifact

            log_checkpoint_artifact(trainer.loggers, rd.path, checkpointer.last_saved_step)
        log_summary(trainer.loggers, summary)
        console.print_summary(summary, rd.path, wandb_sync_hint(rd.path))
    _shutdown_distributed()
    return code


def _corpus_stats(datamodule) -> dict:
    stats = getattr(datamodule, "corpus_stats", None)
    try:
        return dict(stats()) if stats else {}
    except Exception:  # noqa: BLE001 - a summary line is not worth a crash
        return {}


def _quiet_library_warnings() -> None:
    import warnings

    # Advice that does not apply to how this framework launches and logs.
    for pattern in (".*srun.*command is available.*", ".*LeafSpec.*", ".*anonymous setting.*",
                    ".*does not have many workers.*", ".*tensorboardX.*",
                    ".*dataloader is not resumable.*", ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def _peer_watchdog(timeout_s: float) -> Iterator[None]:
    """Multi-node runs: a node cut off from its peers ends itself, naming the lost peer."""
    from trainer.distributed.watchdog import watchdog_for_this_node

    watchdog = watchdog_for_this_node(os.environ, timeout_s)
    if watchdog is not None:
        watchdog.start()
    try:
        yield
    except Exception:
        if watchdog is not None:
            watchdog.check_after_failure()  # the cut-off side ends here, naming the lost peer
        raise
    finally:
        if watchdog is not None:
            watchdog.stop()


def _shutdown_distributed() -> None:
    # Destroying the process group before exit avoids an occasional abort at interpreter shutdown.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Entry for local ranks: python -m trainer.fit <frozen config.yaml>."""
    from trainer.distributed.spawn import record_exit
    from trainer.tracking.run_dir import load_frozen

    args = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        try:
            if len(args) != 1:
                raise UserError("usage: python -m trainer.fit RUN_DIR/config.yaml")
            path = Path(args[0]).absolute()
            cfg = load_frozen(path)
            run_id = os.environ.get("TRAINER_RUN_ID") or path.parent.name
            code = run_fit(cfg, path.parent, run_id)
        except UserError as e:
            record_exit(e.exit_code)  # the launcher does not restart what would fail the same way
            raise
    record_exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
