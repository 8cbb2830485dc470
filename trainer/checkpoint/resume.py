"""Choose the checkpoint a run starts from: an explicit one, or the newest valid one in the run dir."""
from __future__ import annotations

import logging
from pathlib import Path

from trainer.checkpoint import store
from trainer.errors import UserError

log = logging.getLogger("trainer")


def pick_resume_checkpoint(
    root: Path, resume: bool, resume_from: str | None, announce: bool = True
) -> store.CheckpointInfo | None:
    if resume_from:
        path = Path(resume_from).expanduser().absolute()
        if not path.exists():
            raise UserError(f"run.resume_from={path} does not exist")
        try:
            manifest = store.verify(path)
        except store.CheckpointDamaged as e:
            raise UserError(f"run.resume_from: {e}. Pick another checkpoint directory (step-XXXXXXXX) or drop run.resume_from.") from None
        return store.CheckpointInfo(path=path, step=int(manifest["step"]), manifest=manifest)
    if not resume:
        return None
    info, skipped = store.find_latest_valid(root)
    if announce:
        for msg in skipped:
            log.warning("skipping damaged checkpoint: %s", msg)
        for partial in store.leftover_partials(root):
            log.warning("ignoring partial checkpoint %s (a save that did not finish)", partial)
        if info:
            log.info("resuming from %s (step %d)", info.path, info.step)
    return info
