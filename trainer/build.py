"""Public builders: every piece `run_fit` puts together, each from its config section.

This is the one layer that reads config sections; the components below it (data, models, module,
distributed, checkpoint, observability, tracking) take typed arguments. benchmarks/ build through
these functions too, so they measure exactly what the trainer runs.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf

from trainer.config import DATA_DERIVED, RUN_DERIVED, ObservabilityConfig, ProfilerConfig, StrategyConfig
from trainer.distributed.strategy_plan import StrategyPlan, make_plan
from trainer.errors import UserError
from trainer.files import atomic_write_json
from trainer.tracking.run_dir import RunDir

log = logging.getLogger("trainer")
T = TypeVar("T")


@dataclass(frozen=True)
class Device:
    on_gpu: bool
    precision: str  # resolved: never "auto"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.on_gpu else "cpu"


def resolve_device(t: DictConfig) -> Device:
    """GPU or CPU, and the precision `auto` means there (bf16-mixed on GPU, 32-true on CPU)."""
    import torch

    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={t.accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu")
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    if not on_gpu and precision != "32-true" and not precision.startswith("bf16"):
        raise UserError(f"trainer.precision={precision} needs a GPU; use 32-true or bf16-mixed on CPU")
    return Device(on_gpu, precision)


def check_local_devices(t: DictConfig) -> None:
    """Before local ranks start: the GPUs they ask for exist (one clear error, not one per rank)."""
    device = resolve_device(t)
    if device.on_gpu:
        import torch

        if torch.cuda.device_count() < t.devices:
            raise UserError(f"trainer.devices={t.devices} local ranks need {t.devices} GPUs, this machine has "
                            f"{torch.cuda.device_count()}: set trainer.devices={torch.cuda.device_count()}")


def set_cpu_threads(t: DictConfig, device: Device, local_world_size: int) -> None:
    """CPU runs: trainer.num_threads, else OMP_NUM_THREADS, else this process's CPUs split between the local
    ranks (torch would give each rank every core of the machine)."""
    if not device.on_gpu:
        import torch

        from trainer.distributed.env import cpu_threads_per_rank

        torch.set_num_threads(t.num_threads or cpu_threads_per_rank(local_world_size))


def fit_elastic_world(cfg: DictConfig, world_size: int) -> None:
    """Elastic restart with fewer nodes (torchrun --nnodes=MIN:MAX): fewer nodes, more accumulation,
    the same global batch (trainer/distributed/elastic.py)."""
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


def typed(schema: type[T], node: DictConfig) -> T:
    """A config section as its schema dataclass (the frozen config ranks load is untyped YAML)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))  # type: ignore[return-value]


def micro_batch_size(data: DictConfig) -> int:
    return int(data.get("batch_size", 1))


def global_batch(cfg: DictConfig) -> int:
    t = cfg.trainer
    return micro_batch_size(cfg.data) * t.accumulate_grad_batches * t.devices * t.num_nodes


# --------------------------------------------------------------------------- data, model, module
def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a UserError raised inside a constructor surfaced as itself."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except UserError:
        raise
    except Exception as e:  # Hydra wraps constructor errors; surface UserErrors raised inside
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise


def build_datamodule(data: DictConfig):
    """The data module, its data prepared and set up (every rank: one builds token shards under a
    lock, the others wait and reuse them)."""
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(model: DictConfig, datamodule) -> tuple[Any, dict]:
    """The plain nn.Module, with null data-derived arguments (vocab_size, ...) filled from the data
    module, and its spec (target + resolved kwargs) that export/generate rebuild it from."""
    fills = {}
    for key in DATA_DERIVED:
        if key in model and model[key] is None and getattr(datamodule, key, None) is not None:
            fills[key] = getattr(datamodule, key)
    check_vocab(model, datamodule)
    spec = {**OmegaConf.to_container(model, resolve=True), **fills}
    return instantiate(model, **fills), spec


def check_vocab(model: DictConfig, datamodule) -> None:
    vocab = getattr(datamodule, "vocab_size", None)
    if model.get("vocab_size") is not None and vocab is not None and model.vocab_size < vocab:
        raise UserError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary ({vocab}); "
                        "set model.vocab_size=null")


def check_data_and_model(cfg: DictConfig) -> None:
    """Before any file of the run is written (rank 0): build the data module, so that bad data input
    (an unknown tokenizer, a missing text column, a hub dataset while offline ...) stops the run here,
    and check the model against it: the vocabulary, and model.init_from. The token shards go to the
    cache (paths.cache_dir), never the run dir; the ranks then find them built."""
    datamodule = build_datamodule(cfg.data)
    check_vocab(cfg.model, datamodule)
    if cfg.model.get("init_from"):
        check_init_from(cfg, getattr(datamodule, "vocab_size", None))


def check_init_from(cfg: DictConfig, data_vocab: int | None) -> None:
    """Fine-tuning from model.init_from (a Hugging Face Llama directory): every tensor's shape and the
    config values checked against the model this config builds (the vocabulary, when null, is the
    data's, as build_model fills it)."""
    from trainer.models.llama_hf import check_hf_shapes, gpt_config_of

    model = OmegaConf.to_container(cfg.model, resolve=True)
    vocab = data_vocab if model.get("vocab_size") is None else None
    check_hf_shapes(Path(model["init_from"]), gpt_config_of(model, vocab))


def apply_init_from(net, spec: dict) -> None:
    """Load model.init_from into the freshly built net (a resumed run loads its own checkpoint instead)."""
    if spec.get("init_from"):
        from trainer.models.llama_hf import load_hf_weights

        load_hf_weights(net, spec["init_from"])


def build_plan(cfg: DictConfig, net, device: Device, world_size: int) -> StrategyPlan:
    return make_plan(typed(StrategyConfig, cfg.strategy), net=net, on_gpu=device.on_gpu, precision=device.precision, world_size=world_size,
                     micro_batch_size=micro_batch_size(cfg.data), accumulate=cfg.trainer.accumulate_grad_batches,
                     gradient_clip=cfg.trainer.gradient_clip_val, activation_checkpointing=cfg.trainer.activation_checkpointing,
                     compile=cfg.trainer.compile, compile_mode=cfg.trainer.compile_mode)


def build_module(cfg: DictConfig, net, plan: StrategyPlan):
    """The LightningModule: TrainModule with the `optim` and `scheduler` sections, or the user's own
    (`module._target_`), which receives the same arguments where its constructor takes them (a
    TrainModule subclass needs to set only what it changes), and each optimizer argument by name."""
    from trainer.config import import_target, signature_params
    from trainer.module import TrainModule

    arguments = {"optimizer": build_optimizer(cfg.optim, plan), "compile": cfg.trainer.compile and plan.compile_whole_net,
                 "compile_mode": cfg.trainer.compile_mode,
                 "scheduler": instantiate(cfg.scheduler) if cfg.get("scheduler") is not None else None}
    if cfg.get("module") is None:
        return TrainModule(net, **arguments)
    params = signature_params(import_target("module", cfg.module._target_))
    offered = {**_plain_arguments(cfg.optim), "max_steps": cfg.trainer.max_steps, **arguments}
    fills = {k: v for k, v in offered.items() if (params is None or k in params) and k not in cfg.module}
    # Built as a partial, then called: Hydra would turn the optimizer factory into a config value on the way.
    return instantiate(cfg.module, _partial_=True)(net=net, **fills)


def build_optimizer(optim: DictConfig, plan: StrategyPlan):
    """The optimizer factory the module calls with its parameter groups: the `optim` section's partial,
    or the strategy plan's substitute (DeepSpeed's CPU Adam under offload) given the same arguments."""
    if plan.optimizer_class is None:
        return instantiate(optim)
    name = str(optim._target_).rsplit(".", 1)[-1]
    if name not in ("Adam", "AdamW"):
        raise UserError(f"strategy {plan.name} with an offloaded optimizer runs DeepSpeed's CPU Adam, but optim._target_="
                        f"{optim._target_}; use optim=adamw (or turn offload off: strategy.offload_optimizer=false)")
    kept = ("lr", "betas", "eps", "weight_decay")
    arguments = {k: v for k, v in _plain_arguments(optim).items() if k in kept}
    return functools.partial(plan.optimizer_class, **arguments, adamw_mode=name == "AdamW")


def _plain_arguments(node: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- callbacks and loggers
def build_checkpointer(cfg: DictConfig, run_dir: RunDir, run_id: str, plan: StrategyPlan, datamodule, stop_requested):
    from trainer.checkpoint.callback import CheckpointManager

    c = cfg.checkpoint
    return CheckpointManager(
        root=run_dir.checkpoints,
        every_n_steps=c.every_n_steps,
        keep_last=c.keep_last,
        checksum=c.checksum,
        save_final=c.save_final,
        stop_after_steps=cfg.run.stop_after_steps,
        sharded=plan.sharded_checkpoint,
        meta={
            "run_id": run_id,
            **plan.checkpoint_meta,
            "global_batch": global_batch(cfg),
            "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
            "data_fingerprint": getattr(datamodule, "fingerprint", None),
        },
        stop_requested=stop_requested,
        debug_pause_in_save_s=c.debug_pause_in_save_s,
        keep_set_aside=c.keep_set_aside,
        defer_writes=plan.defer_writes if c["async"] else None,  # `async` is a Python keyword: item access
    )


def build_callbacks(cfg: DictConfig, run_dir: RunDir, net, plan: StrategyPlan, checkpointer, preemption, *,
                    is_zero: bool, world_size: int, extra: Sequence[Any] = ()) -> list:
    """In order: observability (its batch-end mark then lands before a checkpoint save, which it leaves
    out of the step timing), training metrics and the loggers' flushing, the strategy's own, checkpoints,
    preemption, progress, rank agreement, the data check's W&B table, then the user's (`callbacks`
    section), then `extra` (benchmarks' step clocks)."""
    from trainer.distributed.preemption import keep_handlers_callback
    from trainer.lifecycle.data_check import wandb_callbacks
    from trainer.tracking import console
    from trainer.tracking.loggers import LoggerFlush
    from trainer.tracking.metrics import TrainingMetrics

    callbacks: list[Any] = [*_observability_callbacks(cfg, run_dir, net), TrainingMetrics(), LoggerFlush(),
                            *plan.callbacks, checkpointer, keep_handlers_callback(preemption),
                            *console.progress_callbacks(cfg.trainer.progress_bar and is_zero,
                                                        metrics_every=cfg.trainer.log_every_steps)]
    if world_size > 1:
        from trainer.distributed.agreement import RankAgreementCheck

        # launcher.local_addr / rdzv_is_host differ per node by design (multi-node torchrun): not compared
        shared = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "launcher"}
        callbacks.append(RankAgreementCheck(shared))
    callbacks += wandb_callbacks(run_dir.data_check)
    callbacks += [instantiate(node) for node in _entries_on(cfg.get("callbacks"))]
    return skip_unused_batch_hooks(callbacks + list(extra))


# The hooks Lightning calls on every callback for every batch. A callback that does not override one
# still costs a dispatch each time (a profiler context and a call); Lightning skips a hook attribute
# that is not callable.
PER_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                   "on_before_optimizer_step", "on_before_zero_grad")


def skip_unused_batch_hooks(callbacks: list) -> list:
    """Blank (on the instance) each per-batch hook a callback leaves as Lightning's no-op."""
    import pytorch_lightning as pl

    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(pl.Callback, hook):
                setattr(callback, hook, None)
    return callbacks


def _entries_on(collection: DictConfig | None) -> list[DictConfig]:
    """The entries of a `logger`/`callbacks` section that are on (false or null: off)."""
    return [node for node in (collection or {}).values() if node is not None and node is not False]


def _observability_callbacks(cfg: DictConfig, run_dir: RunDir, net) -> list:
    """PerfMonitor (unless observability.enabled=false), the torch profiler window (profiler=torch)
    and the debug straggler delay (debug=straggler)."""
    from trainer.observability import PerfMonitor, StepWindowProfiler, StragglerDelay

    callbacks: list[Any] = []
    if cfg.debug.straggler_rank is not None:
        callbacks.append(StragglerDelay(cfg.debug.straggler_rank, cfg.debug.straggler_delay_s))
    obs = typed(ObservabilityConfig, cfg.observability)
    if obs.enabled:
        flops = getattr(net, "flops_per_token", None)
        callbacks.append(PerfMonitor(
            run_dir.perf,
            flops_per_token=float(flops()) if callable(flops) else None,
            tokens_per_sample=cfg.data.get("seq_len"),  # language models; None: count samples only
            log_every_n_steps=cfg.trainer.log_every_steps,
            **vars(obs),
        ))
    if cfg.get("profiler") is not None:
        callbacks.append(StepWindowProfiler(run_dir.profiler, **vars(typed(ProfilerConfig, cfg.profiler))))
    return callbacks


def build_loggers(cfg: DictConfig, run_dir: RunDir, run_id: str) -> list:
    """Each `logger` entry that is on, its run-derived arguments left null (RUN_DERIVED) filled from
    the run: its folder in the run dir, the run's name, W&B id and group, the resolved config and manifest."""
    import inspect
    import json

    from trainer.config import import_target
    from trainer.tracking.loggers import wandb_run_id

    run = {
        "name": lambda: f"{cfg.run.name}/{run_id}",
        "id": lambda: wandb_run_id(run_dir.path),
        "group": lambda: cfg.run.group or cfg.run.name,
        "config": lambda: {"config": OmegaConf.to_container(cfg, resolve=True), "run_id": run_id,
                           "manifest": json.loads(run_dir.manifest.read_text()) if run_dir.manifest.is_file() else None},
    }
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or node is False:
            continue
        target = import_target(f"logger.{name}", node._target_)
        named = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
        fills = {k: run[k]() for k in RUN_DERIVED if k in run and k in named and node.get(k) is None}
        if "save_dir" in named and node.get("save_dir") is None:
            fills["save_dir"] = str(run_dir.logger_dir(str(name)))
        loggers.append(instantiate(node, _partial_=True)(**fills))  # `config` is also instantiate()'s own argument
    return loggers


# --------------------------------------------------------------------------- the Trainer
def build_trainer(t: DictConfig, plan: StrategyPlan, device: Device, *, loggers: list, callbacks: list,
                  run_dir: RunDir, launcher: str | None, is_zero: bool):
    import pytorch_lightning as pl

    from trainer.checkpoint.storage import DirectCheckpointIO

    return pl.Trainer(
        accelerator=device.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=plan.lightning_strategy,
        precision=device.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # the strategy plan clips (plan.callbacks, or inside DeepSpeed's engine)
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
        plugins=[*_cluster_plugins(launcher), DirectCheckpointIO()],  # checkpoint files written in place
        default_root_dir=str(run_dir.path),
        deterministic=t.deterministic,
        **OmegaConf.to_container(t.get("extra") or OmegaConf.create({}), resolve=True),  # validated: no overlap
    )


def _cluster_plugins(launcher: str | None) -> list:
    if launcher != "slurm":
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # Our preemption flag saves through the atomic store; the sbatch script requeues on REQUEUE_EXIT.
    return [SLURMEnvironment(auto_requeue=False)]


def save_run_files(run_dir: RunDir, spec: dict, plan: StrategyPlan) -> None:
    """Rank 0: what export/generate rebuild the net from, and the DeepSpeed JSON as the run used it."""
    atomic_write_json(run_dir.model_spec, spec)
    if plan.deepspeed_config is not None:
        atomic_write_json(run_dir.deepspeed_config, plan.deepspeed_config)
