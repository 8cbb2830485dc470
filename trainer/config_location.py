"""Where Hydra finds the shipped configs: one answer for a source checkout and for an installed package.

configs/ stays at the top of the repository (where Hydra users look for it); packaging (setup.py)
installs the same tree as the package `trainer_configs`, so a non-editable or git-URL install trains too.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

INSTALLED_PACKAGE = "trainer_configs"


def config_dir() -> Path:
    """$TRAINER_CONFIG_DIR when set; else the configs/ beside the `trainer` package being run (a source
    checkout, so its code and configs always match); else the copy installed as `trainer_configs`."""
    if os.environ.get("TRAINER_CONFIG_DIR"):
        return Path(os.environ["TRAINER_CONFIG_DIR"])
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "train.yaml").is_file():
        return checkout
    spec = importlib.util.find_spec(INSTALLED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout  # Hydra then says "Primary config directory not found" and names this path
