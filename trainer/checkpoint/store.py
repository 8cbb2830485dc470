"""Checkpoint directories on disk: atomic publication, an integrity manifest, newest-valid discovery.

Layout: <run_dir>/checkpoints/step-00000100/
            state/ or state.ckpt     what the strategy wrote (one file, or a directory of shards)
            manifest.json            step, world size, strategy, files with sizes and checksums
A checkpoint is written under a temporary name, fsync'ed, then renamed; the manifest is the
last file written, so a directory without a verifying manifest is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from trainer.files import atomic_write_json, fsync_path

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
SET_ASIDE = re.compile(r"^step-\d{8}\.replaced-\d+$")  # publish() moved an older save of that step here
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    manifest: dict = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.path / self.manifest.get("state", "state.ckpt")


class CheckpointDamaged(Exception):
    """A checkpoint directory whose manifest is missing or does not verify."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def tmp_dir_for(root: Path, step: int) -> Path:
    return root / f"{TMP_PREFIX}{step_dir_name(step)}"


def file_checksum(path: Path, algo: str) -> str | None:
    if algo == "size":
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_under(d: Path) -> Iterable[Path]:
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            yield p


def write_manifest(ckpt_dir: Path, *, step: int, state: str, meta: dict, checksum: str) -> dict:
    """fsync every file in ckpt_dir, then write the manifest describing them (itself fsync'ed)."""
    files = {}
    for p in _files_under(ckpt_dir):
        fsync_path(p)
        files[str(p.relative_to(ckpt_dir))] = {"bytes": p.stat().st_size, "sha256": file_checksum(p, checksum)}
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "state": state,
        "checksum": checksum,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
    }
    for d in {*(p.parent for p in _files_under(ckpt_dir))}:
        fsync_path(d)
    atomic_write_json(ckpt_dir / MANIFEST, manifest)  # fsyncs itself and ckpt_dir
    return manifest


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically move a complete checkpoint into place. An existing one at that name is set aside."""
    if final_dir.exists():
        final_dir.rename(final_dir.with_name(f"{final_dir.name}.replaced-{int(time.time())}"))
    os.replace(tmp_dir, final_dir)
    fsync_path(final_dir.parent)


def verify(ckpt_dir: Path, deep: bool = True) -> dict:
    """Return the manifest if every listed file exists with its size (and checksum); else raise."""
    mpath = ckpt_dir / MANIFEST
    if not mpath.is_file():
        raise CheckpointDamaged(f"{ckpt_dir}: no {MANIFEST} (an interrupted save?)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        step = int(manifest["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointDamaged(f"{mpath}: unreadable manifest ({e})") from None
    if not files:
        raise CheckpointDamaged(f"{ckpt_dir}: the manifest lists no files")
    for shard in manifest.get("shards") or []:  # sharded checkpoints: name the rank whose shard is lost
        if not (ckpt_dir / shard["file"]).is_file():
            who = f"rank {shard['rank']} of {manifest.get('world_size')}" if shard.get("rank") is not None else "all ranks"
            raise CheckpointDamaged(f"{ckpt_dir}: missing shard {shard['file']} (written by {who}; "
                                    f"a {manifest.get('strategy')} checkpoint of world size {manifest.get('world_size')})")
    for rel, info in files.items():
        p = ckpt_dir / rel
        if not p.is_file():
            raise CheckpointDamaged(f"{ckpt_dir}: missing file {rel} (a lost shard?)")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise CheckpointDamaged(f"{ckpt_dir}: {rel} is {size} bytes, the manifest says {info['bytes']} (truncated?)")
        if deep and info.get("sha256") and file_checksum(p, "sha256") != info["sha256"]:
            raise CheckpointDamaged(f"{ckpt_dir}: {rel} fails its sha256 checksum (corrupted)")
    if STEP_DIR.match(ckpt_dir.name) and int(STEP_DIR.match(ckpt_dir.name).group(1)) != step:
        raise CheckpointDamaged(f"{ckpt_dir}: the manifest says step {step}, the directory name disagrees")
    return manifest


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Published checkpoint directories under root, newest first (temporary ones excluded)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def find_latest_valid(root: Path, deep: bool = True) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest checkpoint that verifies, and a message for each damaged one skipped on the way."""
    skipped: list[str] = []
    for step, path in list_checkpoints(root):
        try:
            manifest = verify(path, deep=deep)
        except CheckpointDamaged as e:
            skipped.append(str(e))
            continue
        return CheckpointInfo(path=path, step=step, manifest=manifest), skipped
    return None, skipped


def leftover_partials(root: Path) -> list[Path]:
    return sorted(p for p in root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest keep_last verified checkpoints; damaged ones are left for inspection."""
    removed = []
    kept = 0
    for _, path in list_checkpoints(root):
        if (path / MANIFEST).is_file():
            kept += 1
            if kept > keep_last:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def set_aside_or_damaged(root: Path, saving_step: int) -> list[Path]:
    """Checkpoint dirs nothing will load: set aside by publish (step-N.replaced-*), published but failing
    verification (sizes only, cheap), and partial saves (.tmp-step-N) of steps before `saving_step`."""
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        if not p.is_dir():
            continue
        if SET_ASIDE.match(p.name):
            found.append(p)
        elif STEP_DIR.match(p.name):
            try:
                verify(p, deep=False)
            except CheckpointDamaged:
                found.append(p)
        elif p.name.startswith(TMP_PREFIX):
            m = STEP_DIR.match(p.name[len(TMP_PREFIX):])
            if m and int(m.group(1)) < saving_step:
                found.append(p)
    return found


def prune_set_aside(root: Path, keep: int, saving_step: int) -> list[Path]:
    """Delete all but the `keep` most recently set aside of `set_aside_or_damaged`; returns the deleted."""
    found = sorted(set_aside_or_damaged(root, saving_step), key=lambda p: p.stat().st_ctime, reverse=True)
    for p in found[keep:]:
        shutil.rmtree(p, ignore_errors=True)
    return found[keep:]
