"""The run configuration: a typed schema, composition, and validation.

Hydra composes configs/train.yaml with its groups and the command-line overrides; the
dataclasses below are registered in Hydra's ConfigStore as the schema of the framework's
own sections, so an unknown key or a wrong type fails at composition. `model` and `data`
are open `_target_` sections (the user's own classes plug in there): their keys are checked
against the target's constructor signature instead. `validate` then checks ranges and
combinations, before anything heavy is imported or started.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from launch.config import LauncherConfig
from trainer.errors import UserError, closest
from trainer.lifecycle.config import (DataQualityConfig, PipelineConfig, PromoteConfig, RegistryConfig,
                                      check_lifecycle_config)
from trainer.observability.config import ObservabilityConfig, check_observability_config

CONFIG_DIR = Path(os.environ.get("TRAINER_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))

# Model constructor arguments that may stay null in the config: the trainer fills them from the data.
DATA_DERIVED = ("vocab_size", "num_features", "num_classes")
KERNEL_MODES = ("auto", "fused", "reference")
STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


@dataclass
class RunConfig:
    name: str = "default"  # experiment name: the run dir is <root>/<name>/<id>
    id: Optional[str] = None  # None: from the launcher's job id, else a new timestamped id
    dir: Optional[str] = None  # place the run dir exactly (overrides root/name/id)
    stop_after_steps: Optional[int] = None  # end after this step with a checkpoint, as an interruption would
    resume: bool = True  # resume from the newest valid checkpoint in the run dir
    resume_from: Optional[str] = None  # an explicit checkpoint directory to start from


@dataclass
class TrainerConfig:
    max_steps: int = 300
    devices: int = 1  # processes (CPU) or GPUs per node
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_every_steps: int = 50
    log_every_steps: int = 10
    compile: bool = False
    progress_bar: bool = True
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads per process on CPU (None: cores / local ranks)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio


@dataclass
class CheckpointConfig:
    every_n_steps: int = 100
    keep_last: int = 3
    checksum: str = "sha256"  # sha256 | size (size-only verification for very large checkpoints)
    save_final: bool = True
    # Fault injection (tests, drills): sleep this long inside every save, after the state is written and
    # before the manifest and the rename, so a kill can land while the save is unfinished.
    debug_pause_in_save_s: float = 0.0


@dataclass
class StrategyConfig:
    name: str = "single"
    zero_stage: int = 0  # deepspeed only: 1, 2 or 3
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    fsdp_sharding: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
    fsdp_state_dict: str = "sharded"  # sharded | full
    timeout_s: int = 1800  # collective timeout
    deepspeed_config: Dict[str, Any] = field(default_factory=dict)  # merged over the generated JSON


@dataclass
class LoggerConfig:
    wandb: bool = True
    wandb_mode: str = "auto"  # auto: online with an API key configured, else offline | offline | online | disabled
    project: str = "trainer"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    csv: bool = True
    log_checkpoint: bool = False  # log the final checkpoint as a W&B artifact model-<id> (exports always are)


@dataclass
class PathsConfig:
    runs_dir: str = "runs"  # run dirs go under <runs_dir>/<run.name>/<run.id>
    cache_dir: str = "~/.cache/trainer"  # token shards, compiled kernels (node-local)


@dataclass
class TrainConfig:
    seed: int = 1337
    kernels: str = "auto"
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: Any = None  # {_target_: ..., **constructor kwargs}
    data: Any = None  # {_target_: ..., **constructor kwargs}
    module: Any = None  # optional {_target_: a LightningModule} replacing the built-in one
    debug: Any = None  # optional debug knobs (see configs/debug/)
    profiler: Any = None
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    launcher: Optional[LauncherConfig] = None  # set by `+launcher=torchrun|slurm|k8s` (launch/)
    registry: RegistryConfig = field(default_factory=RegistryConfig)  # where promoted models go (trainer/lifecycle)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    pipeline: Optional[PipelineConfig] = None  # set by `pipeline=retrain` (python -m trainer.pipeline)


def register_schema() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # Text data configs pull this in (`defaults: [quality: default]`) as data.quality.
    cs.store(group="data/quality", name="default", node=DataQualityConfig)


register_schema()


# --------------------------------------------------------------------------- composition
def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose configs/<config_name>.yaml with overrides (no Hydra app, no output dir) and validate.

    Errors come back as UserError with the offending key and the closest valid choices.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as e:  # Hydra/OmegaConf raise many types; all mean "bad config"
        raise explain_hydra_error(e, list(overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


_GROUP_NOT_FOUND = re.compile(r"Could not find '([\w/]+)/(\w[\w\-\.]*)'")
_KEY_NOT_IN_STRUCT = re.compile(r"Key '([^']+)' (?:is not in struct|not in '(\w+)')")
_FULL_KEY = re.compile(r"full_key: ([\w\.\[\]]+)")


def explain_hydra_error(e: Exception, overrides: list[str]) -> UserError:
    """Turn a Hydra/OmegaConf composition error into one user-facing sentence with a fix."""
    msg = "\n".join(str(x) for x in _chain(e) if str(x))
    m = _GROUP_NOT_FOUND.search(msg)
    if m:
        group, option = m.group(1), m.group(2)
        options = group_options(group)
        return UserError(
            f"unknown {group} option '{option}'.{closest(option, options)} "
            f"Available {group} options: {', '.join(options)}."
        )
    full_key = _FULL_KEY.search(msg)
    m = _KEY_NOT_IN_STRUCT.search(msg)
    if m:
        key = full_key.group(1) if full_key else m.group(1)
        parent, _, leaf = key.rpartition(".")
        valid = schema_keys(parent) or _target_keys(parent, [o for o in overrides if not o.lstrip("+~").startswith(key)])
        hint = closest(leaf, valid) or (f" Valid keys under '{parent}': {', '.join(valid)}." if valid else "")
        return UserError(f"unknown config key '{key}'.{hint} (To add a new key on purpose use +{key}=...)")
    if "could not be converted" in msg or "Invalid value" in msg or "Value '" in msg:
        key = full_key.group(1) if full_key else "?"
        first = msg.strip().splitlines()[0]
        return UserError(f"wrong type for '{key}': {first}")
    if "mismatched input" in msg or "no viable alternative" in msg or "Error parsing override" in msg:
        return UserError(f"cannot parse the command-line overrides {overrides}: {msg.strip().splitlines()[0]}")
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return UserError(f"invalid configuration: {first}")


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _target_keys(section: str, overrides: list[str]) -> list[str]:
    """Constructor keys of a `_target_` section, composing without the offending override."""
    if section not in ("model", "data", "module"):
        return []
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            node = compose(config_name="train", overrides=overrides).get(section)
        params = _signature_params(import_target(section, node._target_)) if node else None
    except Exception:  # noqa: BLE001 - this only improves an error message
        return []
    finally:
        GlobalHydra.instance().clear()
    return sorted(params or [])


def group_options(group: str) -> list[str]:
    d = CONFIG_DIR / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def schema_keys(parent: str) -> list[str]:
    node: Any = TrainConfig
    for part in [p for p in parent.split(".") if p]:
        hints = typing.get_type_hints(node) if is_dataclass(node) else {}
        node = hints.get(part)
        if node is None:
            return []
    return [f.name for f in fields(node)] if is_dataclass(node) else []


# --------------------------------------------------------------------------- validation
def validate(cfg: DictConfig) -> None:
    """Ranges, combinations and the `_target_` sections' keys. Raises UserError."""
    t, o, r, c, s = cfg.trainer, cfg.optim, cfg.run, cfg.checkpoint, cfg.strategy
    _positive("trainer.max_steps", t.max_steps)
    _positive("trainer.devices", t.devices)
    _positive("trainer.num_nodes", t.num_nodes)
    _positive("trainer.accumulate_grad_batches", t.accumulate_grad_batches)
    _positive("trainer.val_every_steps", t.val_every_steps)
    _positive("trainer.log_every_steps", t.log_every_steps)
    _non_negative("trainer.gradient_clip_val", t.gradient_clip_val)
    _positive("optim.lr", o.lr)
    _non_negative("optim.weight_decay", o.weight_decay)
    _non_negative("optim.warmup_steps", o.warmup_steps)
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    _one_of("optim.schedule", o.schedule, ("cosine", "constant"))
    _one_of("kernels", cfg.kernels, KERNEL_MODES)
    _one_of("trainer.precision", t.precision, PRECISIONS)
    _one_of("trainer.accelerator", t.accelerator, ACCELERATORS)
    _one_of("strategy.name", s.name, STRATEGIES)
    _one_of("checkpoint.checksum", c.checksum, ("sha256", "size"))
    _one_of("logger.wandb_mode", cfg.logger.wandb_mode, ("auto", "offline", "online", "disabled"))
    _positive("checkpoint.every_n_steps", c.every_n_steps)
    _positive("checkpoint.keep_last", c.keep_last)
    _non_negative("checkpoint.debug_pause_in_save_s", c.debug_pause_in_save_s)
    _positive("strategy.timeout_s", s.timeout_s)
    if r.stop_after_steps is not None:
        _positive("run.stop_after_steps", r.stop_after_steps)
    if r.id is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(r.id)):
        raise UserError(f"run.id={r.id!r} may only hold letters, digits, '.', '_' and '-'")
    if s.zero_stage not in (0, 1, 2, 3):
        raise UserError(f"strategy.zero_stage must be 0 (off), 1, 2 or 3, got {s.zero_stage}")
    if s.name == "deepspeed" and s.zero_stage not in (1, 2, 3):
        raise UserError(f"strategy.zero_stage must be 1, 2 or 3 with DeepSpeed, got {s.zero_stage}")
    if s.name != "deepspeed" and (s.offload_optimizer or s.offload_params):
        raise UserError("strategy.offload_optimizer/offload_params need a DeepSpeed strategy (strategy=deepspeed_zero3_offload)")
    if s.offload_params and s.zero_stage != 3:
        raise UserError("strategy.offload_params needs ZeRO stage 3 (strategy=deepspeed_zero3_offload)")
    if s.name == "single" and t.devices * t.num_nodes > 1:
        raise UserError(
            f"strategy=single runs one process, but trainer.devices={t.devices} x trainer.num_nodes={t.num_nodes}."
            " Pick a distributed strategy: strategy=ddp (or fsdp, deepspeed_zero1/2/3)."
        )
    for section in ("model", "data"):
        if cfg.get(section) is None or "_target_" not in cfg[section]:
            raise UserError(f"the '{section}' config needs a _target_ (a class or factory to build it)")
        check_target_kwargs(section, cfg[section])
    if cfg.get("module") is not None:
        check_target_kwargs("module", cfg.module, skip=("net", "model"))
    _validate_model_shapes(cfg.model)
    check_observability_config(cfg.observability)
    check_lifecycle_config(cfg)
    _validate_debug(cfg.get("debug"), t.devices * t.num_nodes)
    _validate_profiler(cfg.get("profiler"))
    _validate_data(cfg.data)


def _validate_data(data: DictConfig) -> None:
    for key in ("batch_size", "seq_len", "val_batches"):
        v = data.get(key)
        if isinstance(v, int):
            _positive(f"data.{key}", v)
    for key in ("num_workers", "batch_delay_s"):
        v = data.get(key)
        if isinstance(v, (int, float)):
            _non_negative(f"data.{key}", v)
    vf = data.get("val_fraction")
    if isinstance(vf, (int, float)) and not 0.0 < vf < 1.0:
        raise UserError(f"data.val_fraction must be between 0 and 1 (exclusive), got {vf}")


PROFILER_KEYS = ("start_step", "num_steps", "record_shapes", "profile_memory", "with_stack", "row_limit")


def _validate_debug(debug: Any, world: int) -> None:
    # Other debug knobs may live in this section too: only the straggler's are checked here.
    if debug is None:
        return
    delay = debug.get("straggler_delay_s")
    if delay is not None and delay < 0:
        raise UserError(f"debug.straggler_delay_s must be 0 or more seconds, got {delay}")
    rank = debug.get("straggler_rank")
    if rank is not None and not 0 <= int(rank) < world:
        raise UserError(f"debug.straggler_rank={rank} is not a rank of this run (0..{world - 1}); "
                        "set trainer.devices>=2 (strategy=ddp) or pick another rank")


def _validate_profiler(profiler: Any) -> None:
    if profiler is None:
        return
    for key in profiler.keys():
        if key not in PROFILER_KEYS:
            raise UserError(f"unknown config key 'profiler.{key}'.{closest(str(key), PROFILER_KEYS)} Valid keys: {', '.join(PROFILER_KEYS)}.")
    for key in ("start_step", "num_steps"):
        if key in profiler:
            _positive(f"profiler.{key}", profiler[key])


def _validate_model_shapes(model: DictConfig) -> None:
    d, h = model.get("d_model"), model.get("n_heads")
    if isinstance(d, int) and isinstance(h, int):
        _positive("model.n_heads", h)
        _positive("model.d_model", d)
        if d % h:
            raise UserError(
                f"model.d_model={d} is not divisible by model.n_heads={h}: pick n_heads from "
                f"{[k for k in range(1, min(d, 64) + 1) if d % k == 0]}"
            )
        if (d // h) % 2:
            raise UserError(f"head size model.d_model/model.n_heads={d // h} must be even for rotary embeddings")
    for key in ("n_layers", "seq_len", "vocab_size"):
        v = model.get(key)
        if isinstance(v, int):
            _positive(f"model.{key}", v)


def check_target_kwargs(section: str, node: DictConfig, skip: tuple[str, ...] = ()) -> None:
    """Check a `_target_` section's keys and simple types against the target's signature."""
    target_path = node._target_
    target = import_target(section, target_path)
    params = _signature_params(target)
    if params is None:
        return  # **kwargs: the target takes anything
    for key in node.keys():
        if str(key).startswith("_") or key in skip:
            continue
        if key not in params:
            raise UserError(
                f"unknown config key '{section}.{key}' for {target_path}.{closest(str(key), params)}"
                f" Valid keys: {', '.join(sorted(params))}."
            )
        value = node._get_node(key)._value() if hasattr(node._get_node(key), "_value") else node[key]
        if OmegaConf.is_missing(node, key) or _is_interpolation(node, key):
            continue
        if value is None and key in DATA_DERIVED:
            continue  # filled from the data module at build time
        _check_type(f"{section}.{key}", value, params[key])


def import_target(section: str, path: str):
    module_name, _, attr = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{section}._target_={path!r} cannot be imported ({e}); give a full dotted path to a class") from None


def _signature_params(target) -> dict[str, Any] | None:
    cfg_cls = getattr(target, "config_class", None)
    if cfg_cls is not None and is_dataclass(cfg_cls):
        hints = typing.get_type_hints(cfg_cls)
        return {f.name: hints.get(f.name, Any) for f in fields(cfg_cls)}
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    return {n: hints.get(n, Any) for n, p in sig.parameters.items() if n != "self" and p.kind is not p.VAR_POSITIONAL}


def _is_interpolation(node: DictConfig, key: str) -> bool:
    return OmegaConf.is_interpolation(node, key)


def _check_type(key: str, value: Any, annotation: Any) -> None:
    allowed = _simple_types(annotation)
    if allowed is None or value is None and type(None) in allowed:
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    elif isinstance(value, (DictConfig, ListConfig)):
        ok = any(a in (dict, list, tuple) for a in allowed) or not allowed
    else:
        ok = isinstance(value, tuple(a for a in allowed if isinstance(a, type))) or (
            isinstance(value, int) and float in allowed and not isinstance(value, bool)
        )
    if not ok:
        names = " or ".join(a.__name__ for a in allowed if a is not type(None))
        raise UserError(f"wrong type for '{key}': expected {names}, got {type(value).__name__} {value!r}")


def _simple_types(annotation: Any) -> tuple | None:
    """The plain types an annotation allows, or None when it is too rich to check."""
    if annotation in (int, float, str, bool):
        return (annotation,)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out = []
        for a in typing.get_args(annotation):
            if a is type(None):
                out.append(type(None))
            elif a in (int, float, str, bool):
                out.append(a)
            elif typing.get_origin(a) in (list, tuple, dict) or a in (list, tuple, dict):
                out.append(typing.get_origin(a) or a)
            else:
                return None
        return tuple(out)
    if origin in (list, tuple, dict) or annotation in (list, tuple, dict):
        return (origin or annotation,)
    return None


def _positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"{key} must be positive, got {value}")


def _non_negative(key: str, value) -> None:
    if value is None or value < 0:
        raise UserError(f"{key} must be >= 0, got {value}")


def _one_of(key: str, value, options) -> None:
    if value not in options:
        raise UserError(f"{key}={value!r} is not one of {', '.join(map(str, options))}.{closest(str(value), options)}")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
