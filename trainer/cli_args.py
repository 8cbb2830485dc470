"""Tiny key=value argument parsing for the small tools (export, generate, report)."""
from __future__ import annotations

from pathlib import Path

from trainer.errors import UserError, closest


def parse_kv(argv: list[str], allowed: dict[str, type], required: tuple[str, ...] = ()) -> dict:
    out: dict = {}
    for arg in argv:
        if "=" not in arg:
            raise UserError(f"expected key=value, got {arg!r}. Keys: {', '.join(allowed)}")
        key, value = arg.split("=", 1)
        if key not in allowed:
            raise UserError(f"unknown argument {key!r}.{closest(key, allowed)} Keys: {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise UserError(f"{key}={value!r} is not a valid {allowed[key].__name__}") from None
    for key in required:
        if key not in out:
            raise UserError(f"missing {key}=... (keys: {', '.join(allowed)})")
    return out


def existing_run_dir(value: str) -> Path:
    from trainer.tracking.run_dir import RunDir

    path = Path(value).expanduser().absolute()
    if not RunDir(path).is_run_dir():
        raise UserError(f"run.dir={path} is not a run dir (no config.yaml there)")
    return path
