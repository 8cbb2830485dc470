"""Tiny key=value argument parsing for the small tools (export, generate, report)."""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

from trainer.errors import UserError, closest


def exit_with_usage_if_asked(argv: list[str], usage: str | None) -> None:
    """`-h`/`--help` anywhere prints the tool's usage (its module docstring) and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print((usage or "").strip())
        raise SystemExit(0)


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


def parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(value)
parse_bool.__name__ = "boolean (true or false)"


def keys_of(prefix: str, cls) -> dict[str, type]:
    """{'prefix.field': parser} for a dataclass's simple fields: the keys of a config section as key=value
    arguments of a small tool (null parses to None for Optional fields)."""
    import typing

    hints = typing.get_type_hints(cls)
    return {f"{prefix}.{f.name}": _parser(hints[f.name]) for f in fields(cls) if not is_dataclass(hints[f.name])}


def _parser(typ) -> type:
    import typing

    if typing.get_origin(typ) is list:
        return _str_list  # type: ignore[return-value]
    args = [a for a in typing.get_args(typ) if a is not type(None)]  # Optional[X] -> X, and "null" parses to None
    base = args[0] if args else typ
    if base is bool:
        return parse_bool  # type: ignore[return-value]
    if base in (int, float, str):
        return _optional(base) if args else base  # type: ignore[return-value]
    return str


def _optional(base: type):
    def parse(value: str):
        return None if value.strip().lower() in ("null", "none", "") else base(value)

    parse.__name__ = base.__name__
    return parse


def _str_list(value: str) -> list[str]:
    return [v.strip() for v in value.strip("[]").split(",") if v.strip()]
