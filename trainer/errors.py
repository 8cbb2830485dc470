"""User-facing errors: one clear message, a non-zero exit, no traceback.

Raise UserError for anything the user can fix (a bad override, a missing file, a corrupt
checkpoint). Entry points wrap their body in `exit_on_user_error`, which prints the message
and exits with code 2 (StorageError: 74); everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import sys
from typing import Iterable, Iterator

USER_ERROR_EXIT = 2
# A write the run needs failed for want of space or permission (disk full, quota, read-only storage).
# 74 is EX_IOERR (sysexits.h); a restart would fail the same way until storage is freed.
STORAGE_ERROR_EXIT = 74


class UserError(Exception):
    """An error the user can fix. The message names the key or file and the fix."""

    exit_code = USER_ERROR_EXIT

    def __init__(self, message: str, *, on_every_rank: bool = False):
        super().__init__(message)
        self.on_every_rank = on_every_rank  # every rank raised this same error: rank 0 alone prints it


class StorageError(UserError):
    """Storage refused a write (ENOSPC, EDQUOT, EROFS, EACCES): the message names the path, the space
    needed and the newest good checkpoint to resume from."""

    exit_code = STORAGE_ERROR_EXIT


def closest(name: str, options: Iterable[str], n: int = 3) -> str:
    """' Did you mean a, b?' or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(options), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except UserError as e:
        if not e.on_every_rank or os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            # A live gloo/NCCL group can abort the interpreter's teardown (SIGABRT instead of
            # exit 2); the message is out, so leave without tearing the group down.
            sys.stdout.flush()
            os._exit(e.exit_code)
        sys.exit(e.exit_code)
