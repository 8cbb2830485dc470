"""What the three launcher CLIs share: argument parsing and composing the run config."""
from __future__ import annotations

import argparse
import shlex
from typing import Mapping, Sequence

from launch.config import JobSpec, job_spec, with_launcher_selected


def parser(kind: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m launch.{kind}",
        description=description,
        epilog="Overrides are the same Hydra overrides `python -m trainer.train` takes; they reach the job unchanged.",
    )
    p.add_argument("--config-dir", "-cd", metavar="DIR",
                   help="your own configs (experiment/, model/, local/ ...), searched after the shipped ones;"
                        " the job gets it too, so it must exist at the same path where the job runs")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=gpt2_124m trainer.devices=8")
    return p


def compose_spec(kind: str, overrides: Sequence[str], config_dir: str | None = None) -> JobSpec:
    """Compose and validate the run config (trainer.config), then the launcher section."""
    from pathlib import Path

    from trainer.config import compose_config

    selected = with_launcher_selected(list(overrides), kind)
    dirs = [str(Path(config_dir).expanduser().absolute())] if config_dir else []
    return job_spec(compose_config(selected, config_dirs=dirs), kind, selected, config_dir=dirs[0] if dirs else None)


def shell_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """One copy-pasteable shell line: `K=V ... argv`, quoted."""
    assignments = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join([*assignments, shlex.join(argv)])
