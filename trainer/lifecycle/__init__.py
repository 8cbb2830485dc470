"""The model's life around a run: data checks, drift, the registry and evaluation-gated promotion,
reproduce, and the retrain pipeline. The heavier tools (mlflow, scipy, datasketch) are the
`lifecycle` extra: `pip install -e '.[lifecycle]'`."""
from __future__ import annotations

import importlib.util


def require(module: str, what: str) -> None:
    """A clear error (not an ImportError traceback) when an optional lifecycle package is missing."""
    if importlib.util.find_spec(module) is None:
        from trainer.errors import UserError

        raise UserError(f"{what} needs the '{module}' package, which is not installed: pip install -e '.[lifecycle]' "
                        "(scripts/test.sh installs it)")
