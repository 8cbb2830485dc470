"""Durable file writes: the one atomic-write helper every writer of the project uses.

A reader never sees a half-written file: the bytes go to a temporary name in the same directory,
are fsync'ed, then renamed over the target (atomic on POSIX), and the directory entry is fsync'ed
so the rename survives a power cut.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any, *, sort_keys: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def append_line_durably(path: Path, line: str) -> None:
    """Append one line to an append-only log (e.g. the registry's decision log) and fsync it: the line
    is on disk before the caller reports the decision. O_APPEND keeps concurrent appenders' lines whole."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
