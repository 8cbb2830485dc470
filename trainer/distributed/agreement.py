"""Every rank must train the same thing: the same resolved config, code and library versions.

Under an external launcher (srun, a PyTorchJob) each rank composes its own config; a node with
a different checkout, another package version or a different environment variable would
otherwise train silently on something else, or hang at the first collective whose shapes differ.
Right after the process group comes up (before the model is wrapped, so before any collective
whose shape depends on the config) the ranks exchange a small identity and compare it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from trainer.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `trainer` package


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of the package's Python sources: works without git (containers, installed wheels)."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        h.update(str(path.relative_to(package_dir)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    from trainer.tracking.manifest import package_versions

    return {"config": config_hash(config), "code": code_hash(), "packages": package_versions()}


def disagreements(identities: list[dict[str, Any]]) -> list[str]:
    """One line per field on which some rank differs from rank 0, naming those ranks."""
    lines = []
    reference = identities[0]
    for key in reference:
        differing = [r for r, ident in enumerate(identities) if ident.get(key) != reference[key]]
        if differing:
            if key == "packages":
                names = sorted({n for r in differing for n, v in identities[r]["packages"].items() if v != reference["packages"].get(n)})
                detail = "; ".join(f"{n}: rank 0 has {reference['packages'].get(n)}, rank {r} has {identities[r]['packages'].get(n)}"
                                   for n in names for r in differing if identities[r]["packages"].get(n) != reference["packages"].get(n))
                lines.append(f"package versions differ ({detail})")
            else:
                what = {"config": "resolved config", "code": "trainer source code"}.get(key, key)
                lines.append(f"{what} differs: rank 0 has {reference[key]}, ranks {differing} have "
                             f"{sorted({identities[r].get(key) for r in differing})}")
    return lines


def check_ranks_agree(identity: dict[str, Any]) -> None:
    """All-gather every rank's identity over the default process group; raise UserError on a mismatch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, identity)
    problems = disagreements(gathered)
    if problems:
        raise UserError(
            "the ranks of this run disagree: " + "; ".join(problems)
            + ". Start every rank from the same checkout, environment and command line "
            "(a frozen config: python -m trainer.fit RUN_DIR/config.yaml)."
        )


class RankAgreementCheck(pl.Callback):
    """Runs check_ranks_agree in Lightning's setup hook: after the process group is up, before the
    strategy wraps the model (DDP/FSDP/DeepSpeed broadcast and shard parameters there)."""

    def __init__(self, config: dict[str, Any]):
        self.identity = run_identity(config)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_ranks_agree(self.identity)
