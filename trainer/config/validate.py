"""Validation of a composed run config: ranges, combinations, and the `_target_` sections.

Runs before anything heavy is imported or started. The framework's own sections are typed
(schema.py), so unknown keys and wrong types have already failed at composition; this checks
values and combinations. A `_target_` section (model, data, module, optim, scheduler, and each
entry of logger and callbacks) is checked against its target's constructor signature, or its `config_class` dataclass when it has one; then the target
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

TARGET_SECTIONS = ("model", "data", "module", "optim", "scheduler")
# Named collections of `_target_` entries (logger.wandb, callbacks.early_stopping ...); false/null: off.
TARGET_COLLECTIONS = ("logger", "callbacks")
# What the trainer passes a target positionally (never a config key): the net, the parameters, the optimizer.
BUILT_ARGUMENTS = {"module": ("net", "model"), "optim": ("params",), "scheduler": ("optimizer",)}
# pl.Trainer arguments the trainer sets itself, and the setting that owns each (trainer.extra may not set them).
TRAINER_OWNED = {
    "accelerator": "trainer.accelerator", "devices": "trainer.devices", "num_nodes": "trainer.num_nodes",
    "strategy": "strategy=...", "precision": "trainer.precision", "max_steps": "trainer.max_steps",
    "max_epochs": "trainer.max_steps", "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "gradient_clip_val": "trainer.gradient_clip_val", "gradient_clip_algorithm": "trainer.gradient_clip_val",
    "val_check_interval": "trainer.val_every_steps", "check_val_every_n_epoch": "trainer.val_every_steps",
    "num_sanity_val_steps": "(none: the trainer validates on its step cadence)",
    "log_every_n_steps": "trainer.log_every_steps", "use_distributed_sampler": "(none: data order is by step)",
    "enable_checkpointing": "the checkpoint group (checkpoint.every_n_steps ...)",
    "enable_progress_bar": "trainer.progress_bar", "enable_model_summary": "callbacks (a ModelSummary entry)",
    "logger": "the logger group (logger=..., +logger.NAME._target_=...)",
    "callbacks": "the callbacks group (callbacks=..., +callbacks.NAME._target_=...)",
    "plugins": "(none: set by the launcher)", "default_root_dir": "run.dir", "deterministic": "trainer.deterministic",
}


def validate(cfg: DictConfig) -> None:
    """Ranges, combinations and the `_target_` sections' keys. Raises UserError."""
    t, r, c, s = cfg.trainer, cfg.run, cfg.checkpoint, cfg.strategy
    for key in ("max_steps", "devices", "num_nodes", "accumulate_grad_batches", "val_every_steps", "log_every_steps"):
        positive(f"trainer.{key}", t[key])
    non_negative("trainer.gradient_clip_val", t.gradient_clip_val)
    validate_trainer_extra(t.get("extra") or {})
    one_of("kernels", cfg.kernels, S.KERNEL_MODES)
    one_of("trainer.precision", t.precision, S.PRECISIONS)
    one_of("trainer.accelerator", t.accelerator, S.ACCELERATORS)
    one_of("trainer.compile_mode", t.compile_mode, S.COMPILE_MODES)
    if t.compile_mode != "default" and not t.compile:
        raise UserError(f"trainer.compile_mode={t.compile_mode} applies to a compiled model: add trainer.compile=true")
    one_of("strategy.name", s.name, S.STRATEGIES)
    one_of("trainer.activation_checkpointing", t.activation_checkpointing, S.ACTIVATION_CHECKPOINTING)
    one_of("checkpoint.checksum", c.checksum, S.CHECKSUMS)
    positive("checkpoint.every_n_steps", c.every_n_steps)
    positive("checkpoint.keep_last", c.keep_last)
    non_negative("checkpoint.keep_set_aside", c.keep_set_aside)
    non_negative("checkpoint.debug_pause_in_save_s", c.debug_pause_in_save_s)
    positive("strategy.timeout_s", s.timeout_s)
    positive("run.lock_stale_after_s", r.lock_stale_after_s)
    if r.stop_after_steps is not None:
        positive("run.stop_after_steps", r.stop_after_steps)
    if r.id is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(r.id)):
        raise UserError(f"run.id={r.id!r} may only hold letters, digits, '.', '_' and '-'")
    _validate_strategy(s, t.devices * t.num_nodes)
    _validate_plan(cfg.plan)
    for section in ("model", "data", "optim"):
        if cfg.get(section) is None or "_target_" not in cfg[section]:
            raise UserError(f"the '{section}' config needs a _target_ (a class or factory to build it)")
    for path, node in target_nodes(cfg):
        check_target(path, node, skip=BUILT_ARGUMENTS.get(path, ()))
    check_optimizer(cfg.optim)
    validate_observability(cfg.observability)
    check_lifecycle_config(cfg)
    _validate_debug(cfg.debug, t.devices * t.num_nodes)
    if cfg.get("profiler") is not None:
        positive("profiler.start_step", cfg.profiler.start_step)
        positive("profiler.num_steps", cfg.profiler.num_steps)


def _validate_strategy(s: DictConfig, world: int) -> None:
    if not isinstance(s.deepspeed_config, DictConfig):
        raise UserError(f"strategy.deepspeed_config must be a mapping or the path of a DeepSpeed JSON file, got {s.deepspeed_config!r}")
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
            " Pick a distributed strategy: strategy=ddp (or fsdp, fsdp2, deepspeed_zero1/2/3)."
        )


def _validate_plan(p: DictConfig) -> None:
    one_of("plan.check", p.check, S.PLAN_CHECKS)
    for key in ("device_memory_gb", "interconnect_gbps"):
        if p[key] is not None:
            positive(f"plan.{key}", p[key])
    positive("plan.internode_gbps", p.internode_gbps)
    if not 0.0 < p.mfu <= 1.0:
        raise UserError(f"plan.mfu must be in (0, 1] (the fraction of the device's peak a step reaches), got {p.mfu}")


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
def target_nodes(cfg: DictConfig):
    """(path, node) of every `_target_` node of a run config: the sections, then each collection's
    entries that are on (`logger.wandb`, `callbacks.early_stopping` ...)."""
    for section in TARGET_SECTIONS:
        if cfg.get(section) is not None:
            yield section, cfg[section]
    for collection in TARGET_COLLECTIONS:
        for name, node in (cfg.get(collection) or {}).items():
            if node is None or node is False:
                continue
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise UserError(f"{collection}.{name} must be a {{_target_: ...}} entry, true (the shipped one) or false (off); got {node!r}")
            yield f"{collection}.{name}", node


def check_optimizer(node: DictConfig) -> None:
    """Build the optimizer once on a one-element parameter: its own argument checks (betas, eps ...)
    then fail here, naming the section, instead of after the model is built."""
    lr = node.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise UserError(f"optim.lr must be a positive number, got {lr!r}")
    wd = node.get("weight_decay")
    if wd is not None and (isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0):
        raise UserError(f"optim.weight_decay must be a number >= 0, got {wd!r}")
    import torch

    kwargs = {str(k): OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
              for k, v in node.items() if not str(k).startswith("_")}
    try:
        import_target("optim", node._target_)([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"invalid 'optim' config for {node._target_}: {e}") from None


def validate_trainer_extra(extra: Any) -> None:
    """trainer.extra holds pl.Trainer arguments the schema does not own: each must be one of pl.Trainer's."""
    if not extra:
        return
    import inspect

    import pytorch_lightning as pl

    params = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in extra:
        if key in TRAINER_OWNED:
            raise UserError(f"trainer.extra.{key} is set by the trainer itself; use {TRAINER_OWNED[key]}")
        if key not in params:
            raise UserError(f"trainer.extra.{key} is not a pl.Trainer argument.{closest(str(key), params)}"
                            f" pl.Trainer takes: {', '.join(p for p in params if p not in TRAINER_OWNED)}.")


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
        if value is None and (key in S.DATA_DERIVED or key in S.RUN_DERIVED and section.startswith("logger.")):
            continue  # filled from the data module / the run at build time
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
# --------------------------------------------------------------------------- the model lifecycle's sections
def check_quality_config(q, prefix: str = "data.quality") -> None:
    one_of(f"{prefix}.on_fail", q.on_fail, S.ON_FAIL)
    for key in ("max_empty_fraction", "max_undecodable_fraction", "max_exact_duplicate_fraction",
                "max_near_duplicate_fraction", "max_leaked_val_fraction", "max_length_outlier_fraction",
                "max_word_length_outlier_fraction"):
        fraction(f"{prefix}.{key}", getattr(q, key))
    if not 0.0 < q.near_duplicate_jaccard <= 1.0:
        raise UserError(f"{prefix}.near_duplicate_jaccard must be in (0, 1], got {q.near_duplicate_jaccard}")
    for key in ("min_documents", "shingle_words", "num_perm", "min_words", "max_words"):
        if getattr(q, key) < 1:
            raise UserError(f"{prefix}.{key} must be >= 1, got {getattr(q, key)}")
    if q.max_words < q.min_words:
        raise UserError(f"{prefix}.max_words={q.max_words} is below {prefix}.min_words={q.min_words}")
    if not 0 < q.min_mean_word_length <= q.max_mean_word_length:
        raise UserError(f"{prefix}.min_mean_word_length={q.min_mean_word_length} must be > 0 and <= "
                        f"{prefix}.max_mean_word_length={q.max_mean_word_length}")


def check_drift_config(d, prefix: str = "drift") -> None:
    for key in ("psi_threshold", "js_threshold", "byte_fallback_threshold", "new_vocab_threshold"):
        if getattr(d, key) <= 0:
            raise UserError(f"{prefix}.{key} must be > 0, got {getattr(d, key)}")
    if d.psi_bins < 2:
        raise UserError(f"{prefix}.psi_bins must be >= 2, got {d.psi_bins}")
    if d.min_documents < 1:
        raise UserError(f"{prefix}.min_documents must be >= 1, got {d.min_documents}")


def check_promote_config(p, prefix: str = "promote") -> None:
    one_of(f"{prefix}.metric", p.metric, S.PROMOTE_METRICS)
    if p.min_delta < 0:
        raise UserError(f"{prefix}.min_delta must be >= 0 (how much better than the champion), got {p.min_delta}")
    if p.max_loss is not None and p.max_loss <= 0:
        raise UserError(f"{prefix}.max_loss must be a positive bar (or null), got {p.max_loss}")
    if p.eval_max_tokens is not None and p.eval_max_tokens < 2:
        raise UserError(f"{prefix}.eval_max_tokens must be >= 2 (or null for all), got {p.eval_max_tokens}")


def check_registry_config(r, prefix: str = "registry") -> None:
    for key in ("lock_timeout_s", "request_timeout_s"):
        if getattr(r, key) <= 0:
            raise UserError(f"{prefix}.{key} must be > 0 seconds, got {getattr(r, key)}")


def check_pipeline_config(p, prefix: str = "pipeline") -> None:
    unknown = [s for s in p.steps if s not in S.PIPELINE_STEPS]
    if unknown or not p.steps:
        raise UserError(f"{prefix}.steps={list(p.steps)}: steps are chosen from {', '.join(S.PIPELINE_STEPS)} (in that order)")
    if list(p.steps) != [s for s in S.PIPELINE_STEPS if s in p.steps]:
        raise UserError(f"{prefix}.steps={list(p.steps)} are out of order: they run as {', '.join(S.PIPELINE_STEPS)}")
    one_of(f"{prefix}.trigger", p.trigger, S.TRIGGERS)
    if p.trigger == "drift" and not p.drift_reference:
        raise UserError(f"{prefix}.trigger=drift needs {prefix}.drift_reference=RUN_DIR_OR_DATA (what the new data is compared with)")
    if p.stop_after is not None and p.stop_after not in p.steps:
        raise UserError(f"{prefix}.stop_after={p.stop_after!r} is not one of the steps {list(p.steps)}")
    check_drift_config(p.drift, f"{prefix}.drift")


def quality_of(data) -> S.DataQualityConfig | None:
    """The data check's settings of a `data` section: None for data modules that are not text corpora;
    for text, data.quality with the schema's defaults for every key it leaves out (absent or null: all)."""
    if data is None or data.get("_target_") != "trainer.data.TokenDataModule":
        return None
    given = data.get("quality")
    given = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given or {})
    names = [f.name for f in fields(S.DataQualityConfig)]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise UserError(f"unknown config key 'data.quality.{unknown[0]}'.{closest(unknown[0], names)} Valid keys: {', '.join(names)}.")
    q = S.DataQualityConfig(**given)
    check_quality_config(q)
    return q


def check_lifecycle_config(cfg) -> None:
    """The lifecycle sections of a composed training config."""
    quality_of(cfg.get("data"))
    check_registry_config(cfg.registry)
    check_promote_config(cfg.promote)
    if cfg.get("pipeline") is not None:
        check_pipeline_config(cfg.pipeline)


def positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"{key} must be positive, got {value}")


def non_negative(key: str, value) -> None:
    if value is None or value < 0:
        raise UserError(f"{key} must be >= 0, got {value}")


def one_of(key: str, value, options) -> None:
    if value not in options:
        raise UserError(f"{key}={value!r} is not one of {', '.join(map(str, options))}.{closest(str(value), options)}")


def fraction(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{key} must be a fraction in [0, 1], got {value}")
