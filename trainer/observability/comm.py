"""Separating communication from backward: a timing wrapper around DDP's all-reduce hook.

DDP hands each gradient bucket to a comm hook as soon as its gradients are ready; the
bucket's all-reduce overlaps the rest of backward. We wrap the default hook (plain
all-reduce, the same maths DDP does without a hook) and mark when a bucket was handed over
and when its reduction finished. Other strategies (FSDP, DeepSpeed) reduce inside their own
engines: their communication stays inside the backward phase and is reported as not separated.
"""
# No `from __future__ import annotations` here: DDP checks the hook's annotations against the
# real classes (dist.GradBucket, torch.futures.Future) and rejects string annotations.
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist


def install_ddp_timing_hook(ddp_model: Any, clock: Any, record: Callable[[Any, Any], None]) -> Optional[str]:
    """Register the timing hook on a DistributedDataParallel model.

    Returns None on success, else the reason communication cannot be separated.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(ddp_model, DistributedDataParallel):
        return f"communication is inside the {type(ddp_model).__name__} backward (not separated)"

    def timed_allreduce(process_group: Optional[dist.ProcessGroup], bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        launch = clock.mark()
        fut = default_hooks.allreduce_hook(process_group, bucket)

        def finished(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            # Runs once the reduction is done (for CUDA futures, with the current stream
            # synchronised to the communication stream, so an event recorded here completes
            # when the all-reduce does).
            record(launch, clock.mark())
            return f.value()  # allreduce_hook's future already yields the averaged bucket tensor

        return fut.then(finished)

    try:
        ddp_model.register_comm_hook(state=None, hook=timed_allreduce)
    except Exception as e:  # a hook is already registered (by the user or the strategy): keep theirs
        return f"communication not separated (DDP comm hook not installed: {e})"
    return None
