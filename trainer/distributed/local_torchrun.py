"""`python -m trainer.distributed.local_torchrun ARGS`: torchrun for the ranks `relaunch_local` starts,
without the traceback torchrun prints whenever a rank exits non-zero.

The ranks say why they stopped (one `error:` line, a preemption notice, or their own traceback),
torchrun's log lines name each rank's exit code, and relaunch_local decides what happens next
(restart, requeue code, or the rank's error code); a ChildFailedError traceback under the one
error line only buried it.
"""
from __future__ import annotations

import sys


def main() -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main()
    except ChildFailedError:
        sys.exit(1)  # torchrun's own exit code for a failed worker group
    except SignalException as e:  # torchrun was told to stop; its workers were stopped the same way
        sys.exit(128 + int(e.sigval))


if __name__ == "__main__":
    main()
