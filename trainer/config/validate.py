"""Validation of a composed run config: ranges, combinations, and the `_target_` sections.

Runs before anything heavy is imported or started. The framework's own sections are typed
(schema.py), so unknown keys and wrong types have already failed at composition; this checks
values and combinations. A `_target_` section (model, data, module) is checked against its
target's constructor signature, or its `config_class` dataclass when it has one; then the target
checks its own values through one of two optional hooks:

- `config_class`: a dataclass that validates itself in `__post_init__` (the GPT's shape rules);
- a classmethod `check_config(**kwargs)` (the data modules' ranges).

Every message names the key and the fix, as a UserError.
"""
from __future__ import annotations

import importlib
import inspect
import re
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from trainer.config import schema as S
from trainer.errors import UserError, closest

TARGET_SECTIONS = ("model", "data", "module")


def validate(cfg: DictConfig) -> None:
    """Ranges, combinations and the `_target_` sections' keys. Raises UserError."""
    t, o, r, c, s = cfg.trainer, cfg.optim, cfg.run, cfg.checkpoint, cfg.strategy
    for key in ("max_steps", "devices", "num_nodes", "accumulate_grad_batches", "val_every_steps", "log_every_steps"):
        positive(f"trainer.{key}", t[key])
    non_negative("trainer.gradient_clip_val", t.gradient_clip_val)
    positive("optim.lr", o.lr)
    non_negative("optim.weight_decay", o.weight_decay)
    non_negative("optim.warmup_steps", o.warmup_steps)
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    one_of("optim.schedule", o.schedule, S.SCHEDULES)
    one_of("kernels", cfg.kernels, S.KERNEL_MODES)
    one_of("trainer.precision", t.precision, S.PRECISIONS)
    one_of("trainer.accelerator", t.accelerator, S.ACCELERATORS)
    one_of("trainer.compile_mode", t.compile_mode, S.COMPILE_MODES)
    if t.compile_mode != "default" and not t.compile:
        raise UserError(f"trainer.compile_mode={t.compile_mode} applies to a compiled model: add trainer.compile=true")
    one_of("strategy.name", s.name, S.STRATEGIES)
    one_of("checkpoint.checksum", c.checksum, S.CHECKSUMS)
    one_of("logger.wandb_mode", cfg.logger.wandb_mode, S.WANDB_MODES)
    positive("checkpoint.every_n_steps", c.every_n_steps)
    positive("checkpoint.keep_last", c.keep_last)
    non_negative("checkpoint.debug_pause_in_save_s", c.debug_pause_in_save_s)
    positive("strategy.timeout_s", s.timeout_s)
    if r.stop_after_steps is not None:
        positive("run.stop_after_steps", r.stop_after_steps)
    if r.id is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(r.id)):
        raise UserError(f"run.id={r.id!r} may only hold letters, digits, '.', '_' and '-'")
    _validate_strategy(s, t.devices * t.num_nodes)
    for section in ("model", "data"):
        if cfg.get(section) is None or "_target_" not in cfg[section]:
            raise UserError(f"the '{section}' config needs a _target_ (a class or factory to build it)")
        check_target(section, cfg[section])
    if cfg.get("module") is not None:
        check_target("module", cfg.module, skip=("net", "model"))
    validate_observability(cfg.observability)
    _validate_debug(cfg.debug, t.devices * t.num_nodes)
    if cfg.get("profiler") is not None:
        positive("profiler.start_step", cfg.profiler.start_step)
        positive("profiler.num_steps", cfg.profiler.num_steps)


def _validate_strategy(s: DictConfig, world: int) -> None:
    if s.zero_stage not in (0, 1, 2, 3):
        raise UserError(f"strategy.zero_stage must be 0 (off), 1, 2 or 3, got {s.zero_stage}")
    if s.name == "deepspeed" and s.zero_stage not in (1, 2, 3):
        raise UserError(f"strategy.zero_stage must be 1, 2 or 3 with DeepSpeed, got {s.zero_stage}")
    if s.name != "deepspeed" and (s.offload_optimizer or s.offload_params):
        raise UserError("strategy.offload_optimizer/offload_params need a DeepSpeed strategy (strategy=deepspeed_zero3_offload)")
    if s.offload_params and s.zero_stage != 3:
        raise UserError("strategy.offload_params needs ZeRO stage 3 (strategy=deepspeed_zero3_offload)")
    if s.name == "single" and world > 1:
        raise UserError(
            f"strategy=single runs one process, but the run asks for {world} (trainer.devices x trainer.num_nodes)."
            " Pick a distributed strategy: strategy=ddp (or fsdp, deepspeed_zero1/2/3)."
        )


def validate_observability(o: Any) -> None:
    positive("observability.nvml_interval_s", o.nvml_interval_s)
    for key in ("straggler_every_n_steps", "verdict_every_n_steps", "window_steps"):
        positive(f"observability.{key}", o[key] if isinstance(o, DictConfig) else getattr(o, key))
    non_negative("observability.warmup_steps", o.warmup_steps)
    if o.straggler_margin <= 0:
        raise UserError(f"observability.straggler_margin must be > 0 (e.g. 0.2 for 20%), got {o.straggler_margin}")
    for key in ("input_bound_fraction", "comm_bound_fraction", "compute_bound_fraction",
                "memory_pressure_fraction", "throttle_fraction"):
        v = o[key] if isinstance(o, DictConfig) else getattr(o, key)
        if not 0.0 < v <= 1.0:
            raise UserError(f"observability.{key} must be in (0, 1], got {v}")
    if o.peak_tflops is not None and o.peak_tflops <= 0:
        raise UserError(
            f"observability.peak_tflops must be a positive number of dense TFLOP/s per device (or null), got {o.peak_tflops}"
        )


def validate_launcher(launcher: S.LauncherConfig, kind: str) -> None:
    if launcher.kind not in S.LAUNCHER_KINDS:
        raise UserError(f"launcher.kind={launcher.kind!r} is not one of {', '.join(S.LAUNCHER_KINDS)}")
    if launcher.kind != kind:
        raise UserError(f"this is the {kind} launcher but the config selects launcher.kind={launcher.kind}: use +launcher={kind}")
    non_negative("launcher.max_restarts", launcher.max_restarts)
    positive("launcher.signal_seconds", launcher.signal_seconds)
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", launcher.time):
        raise UserError(f"launcher.time={launcher.time!r} is not a SLURM time limit: use HH:MM:SS or D-HH:MM:SS")
    one_of("launcher.restart_policy", launcher.restart_policy, S.RESTART_POLICIES)
    for key in launcher.env:
        if re.search(r"(KEY|TOKEN|SECRET|PASSWORD)", key, re.I):
            raise UserError(
                f"launcher.env.{key} looks like a secret: never put credentials in a config."
                " Use launcher.wandb_secret (a Kubernetes Secret) or the cluster's own secret store."
            )


def _validate_debug(debug: DictConfig, world: int) -> None:
    non_negative("debug.straggler_delay_s", debug.straggler_delay_s)
    rank = debug.straggler_rank
    if rank is not None and not 0 <= int(rank) < world:
        raise UserError(f"debug.straggler_rank={rank} is not a rank of this run (0..{world - 1}); "
                        "set trainer.devices>=2 (strategy=ddp) or pick another rank")


# --------------------------------------------------------------------------- `_target_` sections
def check_target(section: str, node: DictConfig, skip: tuple[str, ...] = ()) -> None:
    """Check a `_target_` section's keys and simple types against the target, then let the
    target check its own values (config_class / check_config)."""
    target_path = node._target_
    target = import_target(section, target_path)
    params = signature_params(target)
    concrete: dict[str, Any] = {}
    for key in node.keys():
        key = str(key)
        if key.startswith("_") or key in skip:
            continue
        if params is not None and key not in params:
            raise UserError(
                f"unknown config key '{section}.{key}' for {target_path}.{closest(key, params)}"
                f" Valid keys: {', '.join(sorted(params))}."
            )
        if OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]
        except MissingMandatoryValue:
            continue  # an interpolation of a value still to be given (`???`)
        if value is None and key in S.DATA_DERIVED:
            continue  # filled from the data module at build time
        if params is not None:
            check_type(f"{section}.{key}", value, params[key])
        concrete[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    _target_checks(section, target, concrete)


def _target_checks(section: str, target: Any, kwargs: dict[str, Any]) -> None:
    cfg_cls = getattr(target, "config_class", None)
    try:
        if cfg_cls is not None and is_dataclass(cfg_cls):
            cfg_cls(**kwargs)  # validates itself in __post_init__
        check = getattr(target, "check_config", None)
        if callable(check):
            check(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid '{section}' config for {getattr(target, '__name__', target)}: {e}") from None


def import_target(section: str, path: str) -> Any:
    module_name, _, attr = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{section}._target_={path!r} cannot be imported ({e}); give a full dotted path to a class") from None


def signature_params(target: Any) -> dict[str, Any] | None:
    """{constructor argument: annotation} of a target; None when it takes **kwargs (anything goes)."""
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
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    return {n: hints.get(n, Any) for n, p in sig.parameters.items() if n != "self" and p.kind is not p.VAR_POSITIONAL}


def check_type(key: str, value: Any, annotation: Any) -> None:
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


# --------------------------------------------------------------------------- small checks
def positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"{key} must be positive, got {value}")


def non_negative(key: str, value) -> None:
    if value is None or value < 0:
        raise UserError(f"{key} must be >= 0, got {value}")


def one_of(key: str, value, options) -> None:
    if value not in options:
        raise UserError(f"{key}={value!r} is not one of {', '.join(map(str, options))}.{closest(str(value), options)}")
