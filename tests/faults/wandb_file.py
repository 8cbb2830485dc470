"""Read the history rows of a W&B offline run file (run-<id>.wandb), to check what a run logged.

wandb no longer ships a Python reader for its transaction log. The format is LevelDB's log
format with a 7-byte W&B header: 32 KiB blocks of records, each `crc32c (4) | length (2, LE) |
type (1) | payload`, a payload being a serialized `wandb_internal_pb2.Record` (possibly split
over FIRST/MIDDLE/LAST records at block ends).
"""
from __future__ import annotations

import json
from pathlib import Path

HEADER = 7  # b":W&B" + magic (2) + version (1)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Each protobuf Record in the file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer: too small for a header, zero-filled
            pos += room
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def run_id(path: Path) -> str | None:
    for r in records(path):
        if r.WhichOneof("record_type") == "run":
            return r.run.run_id
    return None


def history(path: Path) -> list[dict]:
    """The logged rows: {key: value} for each history record."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            row = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows
