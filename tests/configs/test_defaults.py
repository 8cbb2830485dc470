"""Each default is written once: the schema (dataclasses, or a `_target_`'s signature) holds it.

A group's default option file (the one configs/train.yaml selects) may not restate a default
with another value, and a component's constructor may not default a setting differently from
the schema section it is built from.
"""
import dataclasses
import inspect

import pytest
from omegaconf import OmegaConf

from trainer.config import CONFIG_DIR, DATA_DERIVED, import_target
from trainer.config import schema as S
from trainer.config.compose import target_defaults

SECTIONS = {f.name: f.type for f in dataclasses.fields(S.TrainConfig)}


def _schema_defaults(section: str) -> dict:
    cls = getattr(S, SECTIONS[section]) if isinstance(SECTIONS[section], str) and hasattr(S, SECTIONS[section]) else None
    cls = cls or {"profiler": S.ProfilerConfig, "launcher": S.LauncherConfig}.get(section)
    return {k: v for k, v in dataclasses.asdict(cls()).items()} if cls else {}


def _default_options() -> list[tuple[str, str]]:
    root = OmegaConf.load(CONFIG_DIR / "train.yaml")
    out = []
    for entry in root.defaults:
        if isinstance(entry, str) or OmegaConf.is_config(entry) is False:
            continue
        for group, option in entry.items():
            if option and group not in ("experiment", "hydra", "hparams_search") and " " not in str(group) \
                    and not str(group).startswith("override"):  # "optional local": a machine's own file
                out.append((str(group), str(option)))
    return out


def _differences(section: str, values: dict, defaults: dict) -> list[str]:
    out = []
    for key in values:
        if key == "_target_" or key not in defaults or OmegaConf.is_interpolation(values, key):
            continue
        value = values[key]
        if value is None and key in DATA_DERIVED:
            continue  # wiring: "take it from the data"
        if OmegaConf.to_container(OmegaConf.create({"v": value}))["v"] != defaults[key]:
            out.append(f"{section}.{key}: {value!r} (default {defaults[key]!r})")
    return out


@pytest.mark.parametrize("group,option", _default_options())
def test_default_options_do_not_restate_a_default_with_another_value(group, option):
    raw = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    text = (CONFIG_DIR / group / f"{option}.yaml").read_text()
    node = raw.get(group) if "@package _global_" in text else raw
    if node is None:
        return
    if "_target_" in node:
        if not str(node._target_).startswith("trainer."):
            return  # a library's class (torch.optim.AdamW): its defaults are the library's, ours are this file
        defaults = target_defaults(import_target(group, node._target_))
    else:
        defaults = _schema_defaults(group)
    assert not _differences(group, node, defaults), f"configs/{group}/{option}.yaml restates defaults: " \
        f"{_differences(group, node, defaults)}; change the schema (trainer/config/schema.py) or the target instead"


@pytest.mark.parametrize("group,option", [("logger", "csv"), ("logger", "wandb")])
def test_collection_entries_do_not_restate_their_targets_defaults(group, option):
    raw = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    for name, node in raw.items():
        defaults = target_defaults(import_target(f"{group}.{name}", node._target_))
        assert not _differences(f"{group}.{name}", node, defaults)


def test_a_restated_default_is_caught(tmp_path):
    """The check above can fail: a file that says trainer.max_steps=1000 is reported."""
    node = OmegaConf.create({"max_steps": 1000, "devices": 1})
    assert _differences("trainer", node, _schema_defaults("trainer")) == ["trainer.max_steps: 1000 (default 300)"]


def _pairs():
    from trainer.checkpoint.callback import CheckpointManager
    from trainer.module import TrainModule
    from trainer.observability.debug import StragglerDelay
    from trainer.observability.profiler import StepWindowProfiler

    return [(TrainModule, _schema_defaults("trainer")),
            (CheckpointManager, _schema_defaults("checkpoint")),
            (StepWindowProfiler, _schema_defaults("profiler")),
            (StragglerDelay, {"rank": None, "delay_s": S.DebugConfig().straggler_delay_s})]


def test_components_default_a_setting_as_the_schema_does_or_require_it():
    for cls, defaults in _pairs():
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name in defaults and p.default is not p.empty:
                assert p.default == defaults[name], f"{cls.__name__}({name}={p.default!r}) but the schema says {defaults[name]!r}"
