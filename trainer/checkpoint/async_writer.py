"""Asynchronous checkpoint saves (`checkpoint.async=true`): the training loop blocks only while the state
is copied to host memory; one background thread writes it, then publishes it.

How a save is split:
1. In the loop (every rank): the strategy builds its state as usual (`trainer.save_checkpoint`), but the
   file writes it would do are captured instead: each tensor is copied to host memory ("staged") and
   the write is recorded in a `DeferredWrites`. The strategy plan says how each strategy's writes are
   captured (`plan.defer_writes`: Lightning's CheckpointIO, torch.distributed.checkpoint, or
   DeepSpeed's checkpoint engine).
2. In the background (`BackgroundSaver`): the recorded writes run, then whatever the synchronous save
   does after its writes (fsync, manifest, atomic rename, pruning; CheckpointManager passes it in).
   Sharded checkpoints wait for every rank's writes on a separate gloo process group, so the
   background work never shares a communicator with the training loop's collectives.

Only one save is in flight: the next one (and the end of training, and a preemption) first waits for
it. A crash before the background work finishes leaves a `.tmp-step-N` directory without a manifest,
never published: the previous checkpoint stays the newest valid one.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger("trainer")


class DeferredWrites:
    """The file writes a save would have made, each with its state already staged in host memory."""

    def __init__(self) -> None:
        self._writes: list[Callable[[], None]] = []

    def add(self, write: Callable[[], None]) -> None:
        self._writes.append(write)

    def take(self) -> list[Callable[[], None]]:
        writes, self._writes = self._writes, []
        return writes


class BackgroundSaver:
    """Runs one save's background work at a time, in a daemon thread; its error surfaces at the next wait."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.write_seconds: list[float] = []  # background time of each completed save

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, work: Callable[[], None], name: str) -> None:
        self.wait()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                work()
                self.write_seconds.append(time.perf_counter() - t0)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name=f"checkpoint-{name}", daemon=True)
        self._thread.start()

    def wait(self) -> float:
        """Block until the save in flight (if any) is published; seconds waited. Raises its error."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- staging to host memory
def _new_host_buffer(src: torch.Tensor) -> torch.Tensor:
    return torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=src.is_cuda)


def stage_to_host(obj: Any, buffer_for: Callable[[torch.Tensor], torch.Tensor] = _new_host_buffer) -> Any:
    """A copy of a (nested) checkpoint with every tensor copied to host memory, into `buffer_for(tensor)`
    (a new buffer by default); tensors that share one storage (tied weights) stay shared. On CUDA the
    copies go to pinned memory, then one synchronise."""
    memo: dict = {}

    def copy(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape), tuple(obj.stride()), obj.dtype)
            if key not in memo:
                src = obj.detach()
                dst = buffer_for(src)
                dst.copy_(src, non_blocking=src.is_cuda)
                memo[key] = dst
            return memo[key]
        if isinstance(obj, dict):
            copied = {k: copy(v) for k, v in obj.items()}
            if isinstance(obj, OrderedDict):  # a module's state dict: keep its type and version metadata
                copied = OrderedDict(copied)
                if hasattr(obj, "_metadata"):
                    copied._metadata = obj._metadata  # type: ignore[attr-defined]
            return copied
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(copy(v) for v in obj)
        return obj  # numbers, strings, hyper-parameters: immutable or not mutated by training

    copied = copy(obj)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return copied


class HostStager:
    """Stages each checkpoint file into the host buffers its previous save used. A run's checkpoints have
    the same tree and shapes every time, so only the first save allocates host memory and touches it
    for the first time (page faults: most of a first save's blocked time on CPU, 1.8 s of 1.27 GiB
    here); later saves are one copy. Safe because a save starts only after the previous one is written
    (CheckpointManager.save waits first). Costs one host copy of the state for the whole run, which
    an asynchronous save needs anyway."""

    def __init__(self) -> None:
        self._previous: dict[str, list[torch.Tensor]] = {}

    def stage(self, obj: Any, slot: str) -> Any:
        """Stage `obj`, the checkpoint file named `slot` (the file's name within the checkpoint dir)."""
        reusable = iter(self._previous.get(slot, ()))
        used: list[torch.Tensor] = []

        def buffer_for(src: torch.Tensor) -> torch.Tensor:
            old = next(reusable, None)
            fits = old is not None and old.shape == src.shape and old.dtype == src.dtype and src.is_cuda == old.is_pinned()
            used.append(old if fits else _new_host_buffer(src))
            return used[-1]

        staged = stage_to_host(obj, buffer_for)
        self._previous[slot] = used
        return staged


# --------------------------------------------------------------------------- capturing a strategy's writes
def defer_checkpoint_io(strategy: Any, deferred: DeferredWrites, group: Any = None) -> None:
    """Strategies that write one file through Lightning's CheckpointIO (single, ddp, fsdp with full
    state dicts): rank 0 stages the checkpoint; the write happens later, exactly as a synchronous save
    writes it (DirectCheckpointIO: straight into the checkpoint's `.tmp-step-N` dir, nothing built in
    memory first, nothing in the system temp dir). A write storage refuses is kept by the IO, as in a
    synchronous save; the background work takes it with `take_refused` (CheckpointManager)."""
    from trainer.checkpoint.storage import DirectCheckpointIO

    stager = HostStager()

    class StagingCheckpointIO(DirectCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
            staged = stager.stage(checkpoint, Path(path).name)
            deferred.add(lambda: DirectCheckpointIO.save_checkpoint(self, staged, path, storage_options))

    strategy.checkpoint_io = StagingCheckpointIO()


def defer_distributed_checkpoint(strategy: Any, deferred: DeferredWrites, group: Any, *, weights_key: str) -> None:
    """Strategies that save a torch.distributed.checkpoint directory (fsdp sharded, fsdp2), laid out as
    Lightning's FSDPStrategy/ModelParallelStrategy lay it out: the weights under `weights_key`, each
    optimizer under `optimizer_<i>`, everything else in `meta.pt` (rank 0). Every rank stages its shards
    (DTensor/ShardedTensor aware); the DCP save then runs in the background on `group`."""
    from torch.distributed.checkpoint.staging import BlockingAsyncStager

    from trainer.checkpoint.shards import DCP_META

    # A new host copy of the shards each save: torch's reusing stager (cache_staged_state_dict) pins its
    # buffers, which needs an accelerator ("Cannot access accelerator device" on CPU ranks).
    shard_stager, meta_stager = BlockingAsyncStager(type_check=False), HostStager()

    def save_checkpoint(checkpoint: dict, filepath, storage_options=None) -> None:
        import torch.distributed.checkpoint as dcp

        path = Path(filepath)
        path.mkdir(parents=True, exist_ok=True)
        state = {weights_key: checkpoint.pop("state_dict"),
                 **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))}}
        staged = shard_stager.stage(state)
        meta = meta_stager.stage(checkpoint, DCP_META) if strategy.global_rank == 0 else None

        def write() -> None:
            dcp.save(staged, checkpoint_id=path, process_group=group)
            if meta is not None:
                torch.save(meta, path / DCP_META)

        deferred.add(write)

    strategy.save_checkpoint = save_checkpoint
