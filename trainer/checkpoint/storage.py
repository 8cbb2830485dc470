"""When storage refuses a write (disk full, quota, read-only): one clear error, on every rank at once.

A failed checkpoint save ends the run with a StorageError (exit STORAGE_ERROR_EXIT) that names the
path, the space a checkpoint needs, and the newest good checkpoint to resume from; the partial save
is removed (it holds space the next attempt needs). Every rank reaches the same agreement point
(`agree_on_failure`), so a rank that wrote nothing does not wait forever for one that failed, and
no rank prints a traceback. `storage_errors` turns any other refused write during training (a log,
the CSV, perf records) into the same kind of error, and keeps a failed save's error when teardown
code fails again on the same full disk.

`DirectCheckpointIO` writes a checkpoint file where it belongs. Lightning's TorchCheckpointIO builds
the file in memory, writes it to the system temp dir (fsspec's transaction) and copies it over: the
temp dir then has to hold a whole checkpoint, and the copy crosses filesystems. Our saves are already
atomic (a `.tmp-step-N` dir, renamed after its manifest), so the file is written in place.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from trainer.checkpoint import store
from trainer.errors import StorageError

# errno values that mean "storage refused the write", not a bug: no space, quota, read-only, permission
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class DirectCheckpointIO(TorchCheckpointIO):
    """torch.save straight into the checkpoint's own (temporary) directory. A refused write is kept, not
    raised, so every rank gets past Lightning's barrier and then agrees on the failure (CheckpointManager)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: tuple[OSError, int] | None = None  # (the error, the bytes the state needed)

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        import torch

        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:  # a Python file: a full disk is an OSError naming the errno
                torch.save(checkpoint, f)
        except Exception as e:
            # torch.save's zip writer reports a full disk as a RuntimeError from its close, with the
            # OSError (errno, no file name) as its context: look down the chain, name the file here.
            refused = storage_oserror(e)
            if refused is None:
                raise
            self.refused = (OSError(refused.errno, refused.strerror, str(path)), state_bytes(checkpoint))

    def take_refused(self) -> tuple[OSError, int] | None:
        refused, self.refused = self.refused, None
        return refused


def state_bytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) checkpoint: about what its file needs."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def refused_write(error: BaseException, directory: Path) -> OSError | None:
    """The storage refusal behind a failed save, if that is what it was: an OSError with a storage errno in
    its chain, or else (torch.save to a path and DeepSpeed report a full disk as a RuntimeError)
    `directory`'s filesystem being read-only or full."""
    found = storage_oserror(error)
    if found is not None:
        return found
    try:
        st = os.statvfs(_existing(directory))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))
    if st.f_bavail * st.f_frsize < 1 << 20:  # less than 1 MiB left: that is why the write failed
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return None


def storage_oserror(error: BaseException) -> OSError | None:
    """An OSError with a storage errno in `error`'s chain of causes."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def agree_on_failure(trainer: Any, message: str | None) -> str | None:
    """Called by every rank at the same point (it is also a barrier): None when no rank failed, else the
    message of the first rank that did."""
    import torch.distributed as dist

    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return message
    import torch

    flag = torch.tensor([0 if message is None else 1], dtype=torch.int32, device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    messages: list[str | None] = [None] * trainer.world_size
    dist.all_gather_object(messages, message)
    return next(m for m in messages if m is not None)


def describe_failed_save(step: int, error: OSError, root: Path, needed_bytes: int | None, *, partial: Path) -> str:
    """The one message a failed save ends the run with: what, where, how much, and what is safe.
    `partial` (the unfinished save) is about to be removed: its space counts as free."""
    where = error.filename or str(root)
    newest, _ = store.find_latest_valid(root, deep=False)
    last_size = sum(f.get("bytes", 0) for f in newest.manifest.get("files", {}).values()) if newest else 0
    need = last_size or needed_bytes
    basis = "the size of the last checkpoint" if last_size else "the size of the state in memory"
    lines = [f"could not save the checkpoint of step {step}: {error.strerror} (errno {error.errno}) writing {where}."]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(_existing(root)).free + sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
        lines.append(f"A checkpoint needs about {_size(need)} ({basis}); {_size(free)} is free on that filesystem"
                     + (" (a quota may be lower)." if error.errno == errno.EDQUOT else "."))
        fix = "free space there (or move the run: run.dir=PATH)"
    else:
        lines.append(f"The checkpoints folder {root} must be writable by this job.")
        fix = "make it writable (or move the run: run.dir=PATH)"
    if newest is not None:
        lines.append(f"Nothing was lost: the newest good checkpoint is {newest.path} (step {newest.step}); "
                     f"{fix}, then run the same command again to resume from it.")
    else:
        lines.append(f"There is no checkpoint yet; {fix}, then run the same command again.")
    return " ".join(lines)


def describe_failed_write(error: OSError, root: Path) -> str:
    """A refused write outside a checkpoint save (a log, the CSV, perf records)."""
    newest, _ = store.find_latest_valid(root, deep=False)
    safe = (f"the newest good checkpoint is {newest.path} (step {newest.step}); run the same command again to resume "
            "from it once storage is fixed" if newest else "there is no checkpoint yet")
    return f"could not write {error.filename or 'a file of the run'}: {error.strerror} (errno {error.errno}); {safe}."


@contextlib.contextmanager
def storage_errors(checkpoints: Path, failed_save: Callable[[], StorageError | None]) -> Iterator[None]:
    """Around training: a refused write ends the run as one StorageError, and a failed save's own error
    wins over whatever teardown code raised after it on the same full disk."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        first = failed_save()
        if first is not None:
            raise first from None
        refused = storage_oserror(e)
        if refused is None:
            raise
        raise StorageError(describe_failed_write(refused, checkpoints)) from None


def remove_partial(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)  # it holds space the next attempt needs


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
