"""Composition: configs/train.yaml + groups + command-line overrides, through Hydra, into one
validated config; and Hydra's errors turned into one sentence naming the key and the fix.

Errors are explained from the exceptions' own attributes (the missing group option and its
choices, the full key, the parse failure), never from their message text.
"""
from __future__ import annotations

import importlib.util
import os
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from trainer.config.schema import TrainConfig, register_schema
from trainer.config.validate import (
    TARGET_COLLECTIONS,
    TARGET_SECTIONS,
    TRAINER_OWNED,
    import_target,
    signature_params,
    target_nodes,
    validate,
)
from trainer.errors import UserError, closest

INSTALLED_CONFIGS = "trainer_configs"  # configs/ as packaging ships it (setup.py)


def config_dir() -> Path:
    """Where the shipped configs are: $TRAINER_CONFIG_DIR when set; else the configs/ beside the `trainer`
    package being run (a source checkout, so its code and configs always match); else the copy installed
    with the package as `trainer_configs` (a non-editable or git-URL install)."""
    if os.environ.get("TRAINER_CONFIG_DIR"):
        return Path(os.environ["TRAINER_CONFIG_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if (checkout / "train.yaml").is_file():
        return checkout
    spec = importlib.util.find_spec(INSTALLED_CONFIGS)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout  # Hydra then says "Primary config directory not found" and names this path


# Your own configs add to these (never replace them): `--config-dir DIR` (Hydra's flag, also taken by
# the launchers) or `hydra.searchpath=[file://DIR]`; see config_dir_overrides.
CONFIG_DIR = config_dir()

register_schema()


def compose_config(overrides: Sequence[str] = (), config_name: str = "train", config_dirs: Sequence[str] = ()) -> DictConfig:
    """Compose configs/<config_name>.yaml with overrides (no Hydra app, no output dir) and validate.

    Constructor arguments of a `_target_` section may be set without `+` (see normalize_overrides).
    `config_dirs` are searched after the shipped configs (as Hydra's --config-dir is).
    Errors come back as UserError with the offending key and the closest valid choices.
    """
    overrides = normalize_overrides([*config_dir_overrides(config_dirs), *overrides], config_name)
    try:
        cfg = _compose(overrides, config_name)
    except Exception as e:  # Hydra/OmegaConf raise many types; all mean "bad config"
        raise explain_hydra_error(e, overrides) from None
    complete_target_sections(cfg)
    validate(cfg)
    return cfg


def compose_unchecked(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose only, in about a second: overrides taken as they are (a `_target_` section's keys not in its
    YAML need `++`), no import of the targets, no validation (compose_config does all of that)."""
    try:
        return _compose(overrides, config_name)
    except Exception as e:  # Hydra/OmegaConf raise many types; all mean "bad config"
        raise explain_hydra_error(e, overrides) from None


def split_config_dir(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the directories of `--config-dir DIR` / `-cd DIR` / `--config-dir=DIR`, the other arguments)."""
    dirs, rest, it = [], [], iter(argv)
    for a in it:
        flag, eq, value = a.partition("=")
        if flag in ("--config-dir", "-cd"):
            value = value if eq else next(it, None)
            if not value:
                raise UserError(f"{flag} needs a directory: {flag} DIR")
            dirs.append(value)
        else:
            rest.append(a)
    return dirs, rest


def config_dir_overrides(config_dirs: Sequence[str]) -> list[str]:
    """`--config-dir DIR` as an override: DIR joins Hydra's search path after the shipped configs, so its
    files add options to the groups (experiment/mine.yaml, local/default.yaml) and replace none."""
    if not config_dirs:
        return []
    paths = []
    for d in config_dirs:
        path = Path(d).expanduser().absolute()
        if not path.is_dir():
            raise UserError(f"--config-dir {d}: no such directory")
        paths.append(f"file://{path}")
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def complete_target_sections(cfg: DictConfig) -> None:
    """Fill each `_target_` node (sections and collection entries) with the target's defaults for the
    keys its YAML leaves out.

    The target's signature (or config_class) is the schema of its section and holds the defaults
    once; filled in, the frozen config shows every value a run used, and `${model.seq_len}` resolves.
    """
    from omegaconf import open_dict

    read_deepspeed_file(cfg)
    turn_on_shipped_entries(cfg)
    for path, node in target_nodes(cfg):
        if path == "module":  # takes the optim/scheduler sections' values where it leaves them out (build.py)
            continue
        defaults = target_defaults(import_target(path, node._target_))
        with open_dict(node):
            for key, value in defaults.items():
                if key not in node.keys():  # `in node` is False for a `???` key, which must stay missing
                    node[key] = value


def turn_on_shipped_entries(cfg: DictConfig) -> None:
    """`logger.wandb=true` (or `callbacks.early_stopping=true`): the entry as its option file ships it
    (configs/logger/wandb.yaml), so an entry turned off (by an experiment, an earlier override) can be
    turned on again without spelling its `_target_`; keys set after it (`logger.wandb.mode=offline`,
    which Hydra then holds without a `_target_`) apply on top of the shipped entry."""
    from omegaconf import DictConfig as Node
    from omegaconf import OmegaConf, open_dict

    for collection in TARGET_COLLECTIONS:
        entries = cfg.get(collection)
        for name, value in list((entries or {}).items()):
            if value is not True and not (isinstance(value, Node) and "_target_" not in value):
                continue
            option = CONFIG_DIR / collection / f"{name}.yaml"
            shipped = OmegaConf.load(option).get(name) if option.is_file() else None
            if shipped is None:
                if value is not True:
                    continue  # validate() names what a user entry lacks
                choices = sorted(p.stem for p in (CONFIG_DIR / collection).glob("*.yaml") if p.stem != "default")
                raise UserError(f"{collection}.{name}=true: no shipped {collection} entry named {name!r} "
                                f"(shipped: {', '.join(choices)}); add yours with +{collection}.{name}._target_=...")
            with open_dict(entries):
                entries[name] = shipped if value is True else OmegaConf.merge(shipped, value)


def read_deepspeed_file(cfg: DictConfig) -> None:
    """`strategy.deepspeed_config=/path/ds.json` (as Lightning and Accelerate take it): the file's JSON
    object replaces the path, so the frozen config holds what the run used."""
    import json

    from omegaconf import OmegaConf, open_dict

    strategy = cfg.get("strategy")
    value = strategy.get("deepspeed_config") if strategy is not None else None
    if not isinstance(value, str):
        return
    path = Path(value).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"strategy.deepspeed_config={value}: no such file (give a DeepSpeed JSON file, or keys: "
                        "+strategy.deepspeed_config.KEY=VALUE)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"strategy.deepspeed_config={value}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"strategy.deepspeed_config={value} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict):
        raise UserError(f"strategy.deepspeed_config={value} must hold a JSON object (a DeepSpeed config), got {type(data).__name__}")
    with open_dict(strategy):
        strategy.deepspeed_config = OmegaConf.create(data)


# One process composes the same overrides several times (the checks before Hydra's main, the arguments
# rewritten for it, the launchers' job specs): each Hydra composition costs ~0.2 CPU-s, so a start-up
# that composed ~25 times spent ~4 CPU-s here. Kept: the last few successful compositions, handed out as copies
# (callers fill and mutate them).
_COMPOSED: dict[tuple, DictConfig] = {}
_COMPOSED_KEEP = 16


def _compose(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    import copy

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    key = (str(CONFIG_DIR), config_name, tuple(overrides))
    if key not in _COMPOSED:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=list(overrides))
        finally:
            GlobalHydra.instance().clear()
        if len(_COMPOSED) >= _COMPOSED_KEEP:
            _COMPOSED.pop(next(iter(_COMPOSED)))
        _COMPOSED[key] = cfg
    return copy.deepcopy(_COMPOSED[key])


def normalize_overrides(overrides: Sequence[str], config_name: str = "train") -> list[str]:
    """Let `data.text_field=x` set any constructor argument of a `_target_` section.

    A YAML option file lists only what differs from the target's defaults, so Hydra (struct mode)
    would demand `+data.text_field=x` for the others. An override of a key the target's signature
    accepts is rewritten to `++key=value` (add or override); anything else is left for Hydra to
    refuse, with the target's real keys as suggestions.
    """
    out = _with_predicted_plus(list(overrides), config_name)
    for _ in range(len(out)):
        try:
            _compose([o for o in out if not _is_sweep(o)], config_name)  # a -m sweep's values compose one at a time
            return out
        except Exception as e:  # noqa: BLE001 - only a target section's unknown key is handled here
            key = _unknown_key(e)
        node_path, leaf = target_key(key or "") or ("", "")
        at = next((i for i, o in enumerate(out) if o.split("=", 1)[0] == key), None)
        if not node_path or at is None:
            return out
        params = target_params(node_path, out[:at] + out[at + 1:], config_name)
        if params is not None and leaf not in params:
            return out
        out[at] = "++" + out[at]
    for at, o in enumerate(out):  # sweep overrides of constructor arguments the YAML leaves out
        key = o.split("=", 1)[0]
        node_path, leaf = target_key(key) or ("", "")
        if _is_sweep(o) and node_path:
            params = target_params(node_path, out, config_name)
            if (params is None or leaf in params) and not _has_key(out, key, config_name):
                out[at] = "++" + o
    return out


def _with_predicted_plus(overrides: list[str], config_name: str) -> list[str]:
    """normalize_overrides' answer found at once, in the usual case: the `_target_` sections as the choosing
    overrides compose them, and `++` for each constructor argument they lack. (Found one Hydra error at a
    time, the answer cost two compositions per argument.) Returned only when it composes; else the overrides
    as given, for the one-at-a-time search and its error messages."""
    from omegaconf import OmegaConf

    plain = [o for o in overrides if not _is_sweep(o)]
    try:
        base = _compose(_choosing(plain), config_name)
    except Exception:  # noqa: BLE001 - the search below meets (and explains) the same error
        return overrides
    out = list(overrides)
    for at, o in enumerate(out):
        key = o.split("=", 1)[0]
        found = target_key(key)
        if found is None or "=" not in o or _chooses(o) or _is_sweep(o):
            continue
        node_path, leaf = found
        node = OmegaConf.select(base, node_path)
        if isinstance(node, DictConfig) and leaf in node.keys():  # keys(): a `???` value is there too
            continue
        accepted = _params_in(base, node_path)
        if accepted is None or leaf in accepted:
            out[at] = "++" + o
    if out == overrides:
        return overrides
    try:
        _compose([o for o in out if not _is_sweep(o)], config_name)
    except Exception:  # noqa: BLE001 - not what the search would find: let it find its own answer
        return overrides
    return out


def _chooses(override: str) -> bool:
    """An override that picks a section's target: a group choice (`data=text`), a `_target_` key, the search path."""
    key = override.split("=", 1)[0]
    return "." not in key or key.endswith("._target_") or override.startswith("hydra.searchpath=")


def _choosing(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if _chooses(o)]


def _params_in(cfg: DictConfig, section: str) -> list[str] | None:
    """target_params for a composed config: [] when the section has no importable target (nothing accepted)."""
    from omegaconf import OmegaConf

    if section == "trainer.extra":
        return target_params(section, ())
    node = OmegaConf.select(cfg, section)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return []
    try:
        params = signature_params(import_target(section, target))
    except Exception:  # noqa: BLE001 - an unimportable target: validate() explains it
        return []
    return sorted(params) if params is not None else None


def target_key(key: str) -> tuple[str, str] | None:
    """(node, argument) when `key` may name a constructor argument: `model.d_model` -> (model, d_model),
    `logger.wandb.project` -> (logger.wandb, project), `trainer.extra.limit_val_batches` -> (trainer.extra, ...)."""
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in TARGET_SECTIONS:
        return parts[0], parts[1]
    if len(parts) == 3 and (parts[0] in TARGET_COLLECTIONS or parts[:2] == ["trainer", "extra"]):
        return f"{parts[0]}.{parts[1]}", parts[2]
    return None


def _is_target_node(path: str) -> bool:
    return target_key(f"{path}.x") is not None


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # noqa: BLE001 - not parseable: Hydra reports it later
        return False


def _has_key(overrides: Sequence[str], key: str, config_name: str) -> bool:
    from omegaconf import OmegaConf

    try:
        cfg = _compose([o for o in overrides if not _is_sweep(o)], config_name)
    except Exception:  # noqa: BLE001
        return True
    return OmegaConf.select(cfg, key, default="__missing__") != "__missing__"


_PLAIN = (type(None), bool, int, float, str, list, tuple, dict)


def target_defaults(target: Any) -> dict[str, Any]:
    """{argument: default} for a target's arguments that have a plain default (none for **kwargs)."""
    import inspect
    from dataclasses import MISSING

    cfg_cls = getattr(target, "config_class", None)
    out: dict[str, Any] = {}
    if cfg_cls is not None and is_dataclass(cfg_cls):
        for f in fields(cfg_cls):
            value = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else MISSING)
            if value is not MISSING and isinstance(value, _PLAIN):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
    fn = target.__init__ if inspect.isclass(target) else target
    for name, p in inspect.signature(fn).parameters.items():
        if name in ("self", "net", "model") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        if isinstance(p.default, _PLAIN):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def target_params(section: str, overrides: Sequence[str], config_name: str = "train") -> list[str] | None:
    """Constructor keys of a `_target_` node (`model`, `logger.wandb`) as composed from these overrides
    (None: **kwargs); for `trainer.extra`, the pl.Trainer arguments the trainer does not set itself.

    Only the overrides that choose the target count: group choices (`data=text`), `_target_` keys and
    the search path."""
    if section == "trainer.extra":
        import inspect

        import pytorch_lightning as pl

        return sorted(p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self" and p not in TRAINER_OWNED)
    from omegaconf import OmegaConf

    try:
        cfg = _compose(_choosing(overrides), config_name)
    except Exception:  # noqa: BLE001 - this only improves an override or a message
        return []
    return _params_in(cfg, section) if OmegaConf.select(cfg, section) else None


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _unknown_key(e: BaseException) -> str | None:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    for x in _chain(e):
        if isinstance(x, (ConfigAttributeError, ConfigKeyError)) and getattr(x, "full_key", None):
            return str(x.full_key)
    return None


def explain_hydra_error(e: Exception, overrides: Sequence[str]) -> UserError:
    """Turn a Hydra/OmegaConf composition error into one user-facing sentence with a fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    chain = list(_chain(e))
    for x in chain:
        missing = getattr(x, "missing_cfg_file", None) if isinstance(x, MissingConfigException) else None
        if missing and "/" in missing:
            group, option = missing.rsplit("/", 1)
            options = list(x.options or group_options(group))
            return UserError(
                f"unknown {group} option '{option}'.{closest(option, options)} "
                f"Available {group} options: {', '.join(options)}."
            )
    for x in chain:
        if isinstance(x, OverrideParseException):
            return UserError(f"cannot parse the command-line overrides {list(overrides)}: {str(x).strip().splitlines()[0]}")
    for x in chain:
        key = getattr(x, "full_key", None)
        if isinstance(x, (ConfigAttributeError, ConfigKeyError)) and key:
            parent, _, leaf = str(key).rpartition(".")
            if parent == "trainer.extra" and leaf in TRAINER_OWNED:
                return UserError(f"trainer.extra.{leaf} is set by the trainer itself; use {TRAINER_OWNED[leaf]}")
            others = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
            valid = schema_keys(parent) or (target_params(parent, others) if _is_target_node(parent) else []) or []
            hint = closest(leaf, valid) or (f" Valid keys under '{parent}': {', '.join(valid)}." if valid else "")
            return UserError(f"unknown config key '{key}'.{hint} (To add a new key on purpose use +{key}=...)")
        if isinstance(x, ValidationError) and key:
            return UserError(f"wrong type for '{key}': {str(x).strip().splitlines()[0]}")
    first = next((str(x).strip().splitlines()[0] for x in chain if str(x).strip()), type(e).__name__)
    return UserError(f"invalid configuration: {first}")


def group_options(group: str) -> list[str]:
    d = CONFIG_DIR / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def schema_keys(parent: str) -> list[str]:
    """The keys of a typed section (e.g. 'trainer'), from the schema; [] for open sections."""
    node: Any = TrainConfig
    for part in [p for p in parent.split(".") if p]:
        hints = typing.get_type_hints(node) if is_dataclass(node) else {}
        node = hints.get(part)
        if node is None:
            return []
        args = [a for a in typing.get_args(node) if is_dataclass(a)]  # Optional[Section]
        node = args[0] if args else node
    return [f.name for f in fields(node)] if is_dataclass(node) else []
