"""Value checks shared by the data modules' `check_config` (each section's values checked once)."""
from __future__ import annotations

import inspect
from typing import Any

from trainer.errors import UserError


def with_defaults(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor's defaults overlaid with the given arguments."""
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty}
    return {**defaults, **kwargs}


def require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise UserError(f"data.{key}={value!r} is invalid: it must be {what}.")
