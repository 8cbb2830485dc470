"""The Lightning callback that saves checkpoints on a step cadence, at stop_after_steps, on a
preemption request and at the end, through the atomic store in checkpoint/store.py; with
`defer_writes` (checkpoint.async=true) the writing and publishing happen in the background
(checkpoint/async_writer.py)."""
from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytorch_lightning as pl

from trainer.checkpoint import storage, store
from trainer.checkpoint.async_writer import BackgroundSaver, DeferredWrites
from trainer.errors import StorageError

log = logging.getLogger(__name__)


class CheckpointManager(pl.Callback):
    def __init__(
        self,
        root: Path,
        every_n_steps: int,
        keep_last: int,
        checksum: str = "sha256",
        save_final: bool = True,
        stop_after_steps: int | None = None,
        sharded: bool = False,
        meta: dict[str, Any] | None = None,
        stop_requested: Callable[[pl.Trainer], bool] | None = None,
        debug_pause_in_save_s: float = 0.0,
        keep_set_aside: int = 2,
        defer_writes: Callable[[Any, DeferredWrites, Any], None] | None = None,
    ):
        """defer_writes: save asynchronously, capturing the strategy's writes this way (the strategy plan's
        `defer_writes`); None saves synchronously."""
        self.root = Path(root)
        self.every_n_steps, self.keep_last, self.checksum = every_n_steps, keep_last, checksum
        self.save_final, self.stop_after_steps = save_final, stop_after_steps
        self.state_name = "state" if sharded else "state.ckpt"
        self.meta = dict(meta or {})
        self.stop_requested = stop_requested  # preemption: returns True on every rank once all agree
        self.last_saved_step: int | None = None
        self.stopped_early: str | None = None  # "stop_after_steps" | "preempted"
        self._last_seen_step = -1
        self.save_seconds: list[float] = []
        self.preempt_saved_at: float | None = None
        self.debug_pause_in_save_s = debug_pause_in_save_s
        self.storage_error: StorageError | None = None  # a save storage refused (checkpoint/storage.py)
        self.keep_set_aside = keep_set_aside
        self.defer_writes = defer_writes
        self.saver = BackgroundSaver() if defer_writes is not None else None
        self._deferred = DeferredWrites()
        self._group: Any = None  # the background saves' own gloo process group (sharded, world > 1)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.defer_writes is None:
            return
        if trainer.world_size > 1:
            import torch.distributed as dist

            # Collective on every rank, here in the same order; never shared with the loop's collectives.
            self._group = dist.new_group(backend="gloo")
        self.defer_writes(trainer.strategy, self._deferred, self._group)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_seen_step:
            return  # inside a gradient-accumulation window: no optimizer step happened yet
        self._last_seen_step = step
        preempt = self.stop_requested is not None and self.stop_requested(trainer)
        at_stop = self.stop_after_steps is not None and step >= self.stop_after_steps
        if preempt or at_stop or step % self.every_n_steps == 0:
            self.save(trainer, step)
        if preempt:
            self.wait_for_save(trainer)  # exit for the requeue only once the checkpoint is published
            self.preempt_saved_at = time.time()
            # Exit right after the save: Lightning validates whenever a callback stops training, which cost
            # the grace period's seconds and left validation rows at a step the schedule never asked for.
            trainer.limit_val_batches = 0
        if preempt or at_stop:
            self.stopped_early = "preempted" if preempt else "stop_after_steps"
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.save_final and self.last_saved_step != trainer.global_step and trainer.global_step > 0:
            self.save(trainer, trainer.global_step)
        self.wait_for_save(trainer)

    def wait_for_save(self, trainer: pl.Trainer) -> None:
        """Block until an asynchronous save in flight is published. Every rank calls it at the same point:
        storage refusing that save's writes (on any rank) ends the run on every rank with one StorageError,
        the message a synchronous save gives."""
        if self.saver is None:
            return
        if self.saver.in_flight:
            log.info("waiting for the checkpoint of step %s to be written", self.last_saved_step)
        message = None
        try:
            self.saver.wait()
        except StorageError as e:  # raised by _write_and_publish in the background
            message = str(e)
        message = storage.agree_on_failure(trainer, message)  # ddp: only rank 0 wrote, the others must hear
        if message is not None:
            self.storage_error = StorageError(message, on_every_rank=True)
            raise self.storage_error

    # ------------------------------------------------------------------ saving
    def save(self, trainer: pl.Trainer, step: int) -> Path:
        t0 = time.perf_counter()
        tmp = store.tmp_dir_for(self.root, step)
        final = self.root / store.step_dir_name(step)
        self.wait_for_save(trainer)  # one save in flight: the previous one is published before this one starts
        with self._refusals(trainer, step, tmp):  # each phase ends with every rank agreeing it went well
            if trainer.is_global_zero:
                self.root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)  # a partial from a crash at this very step
                tmp.mkdir(parents=True)
        with self._refusals(trainer, step, tmp):
            trainer.save_checkpoint(tmp / self.state_name, weights_only=False)  # barriers inside; async: staged only
        publish = functools.partial(self._publish, tmp, final, step, trainer.world_size, trainer.num_nodes,
                                    is_zero=trainer.is_global_zero)
        if self.saver is None:
            with self._refusals(trainer, step, tmp):
                publish()
        else:
            # Background: a storage refusal there surfaces at the next wait_for_save, on every rank.
            self.saver.submit(functools.partial(self._write_and_publish, self._deferred.take(), publish, step=step,
                                                tmp=tmp, io=trainer.strategy.checkpoint_io,
                                                is_zero=trainer.is_global_zero),
                              name=store.step_dir_name(step))
        self.last_saved_step = step
        self.save_seconds.append(time.perf_counter() - t0)  # the time the training loop was blocked
        return final

    def _write_and_publish(self, writes: list[Callable[[], None]], publish: Callable[[], None], *, step: int,
                           tmp: Path, io: Any, is_zero: bool) -> None:
        """Background: this rank's deferred writes; for shards, every rank's; then publish. Storage refusing
        a write gives the synchronous save's message as a StorageError (raised at the next wait_for_save)
        and the partial save is removed."""
        message = self._refusal(step, tmp, io, lambda: [write() for write in writes])
        if self._group is not None and self.state_name == "state":
            import torch.distributed as dist

            # Every rank's shard is on disk (or some rank was refused) before rank 0 writes the manifest.
            messages: list[str | None] = [None] * dist.get_world_size(self._group)
            dist.all_gather_object(messages, message, group=self._group)
            message = next((m for m in messages if m is not None), None)
        if message is None:
            message = self._refusal(step, tmp, io, publish)
        if message is not None:
            if is_zero:
                storage.remove_partial(tmp)
            # Kept at once: a write the loop makes on the same full disk before the next wait reports this.
            self.storage_error = StorageError(message, on_every_rank=True)
            raise self.storage_error

    def _refusal(self, step: int, tmp: Path, io: Any, work: Callable[[], Any]) -> str | None:
        """Run `work`; the message for a write storage refused in it (raised, or kept by DirectCheckpointIO),
        else None. Any other error is raised."""
        try:
            work()
        except Exception as e:
            refused = storage.refused_write(e, self.root)
            if refused is None:
                raise
            return storage.describe_failed_save(step, refused, self.root, None, partial=tmp)
        kept = io.take_refused() if isinstance(io, storage.DirectCheckpointIO) else None
        return storage.describe_failed_save(step, kept[0], self.root, kept[1], partial=tmp) if kept else None

    def _publish(self, tmp: Path, final: Path, step: int, world_size: int, num_nodes: int, *, is_zero: bool) -> None:
        """After the state is written: rank 0 writes the manifest, renames the directory into place, prunes."""
        if self.debug_pause_in_save_s:
            log.warning("debug: pausing %.1f s inside the save of step %d (before its manifest)", self.debug_pause_in_save_s, step)
            time.sleep(self.debug_pause_in_save_s)
        if not is_zero:
            return
        meta = {**self.meta, "world_size": world_size, "num_nodes": num_nodes, "global_step": step}
        if self.state_name == "state":  # sharded: record who wrote what; refuse to publish an incomplete set
            from trainer.checkpoint.shards import shard_list

            meta["shards"] = shard_list(tmp, self.state_name, self.meta.get("strategy", ""), world_size,
                                        self.meta.get("zero_stage"))
        store.write_manifest(tmp, step=step, state=self.state_name, meta=meta, checksum=self.checksum)
        store.publish(tmp, final)
        for p in store.prune(self.root, self.keep_last):
            log.debug("pruned old checkpoint %s", p)
        self._prune_set_aside(step)

    def _prune_set_aside(self, step: int) -> None:
        for p in store.prune_set_aside(self.root, self.keep_set_aside, saving_step=step):
            log.info("removed %s: set aside, damaged or unfinished (checkpoint.keep_set_aside=%d keeps the most "
                     "recent for inspection)", p, self.keep_set_aside)

    @contextlib.contextmanager
    def _refusals(self, trainer: pl.Trainer, step: int, tmp: Path) -> Iterator[None]:
        """One phase of a save, on every rank. Storage refusing a write here (or on any rank) ends the run
        with one StorageError on every rank (checkpoint/storage.py); the agreement is the phase's barrier."""
        message = None
        try:
            yield
        except Exception as e:
            refused = storage.refused_write(e, self.root)
            if refused is None:
                raise
            message = storage.describe_failed_save(step, refused, self.root, None, partial=tmp)
        if message is None:
            message = self._refusal(step, tmp, trainer.strategy.checkpoint_io, lambda: None)
        message = storage.agree_on_failure(trainer, message)
        if message is not None:
            if trainer.is_global_zero:
                storage.remove_partial(tmp)
            self.storage_error = StorageError(message, on_every_rank=True)
            raise self.storage_error

    def state_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_step = state_dict.get("last_saved_step")
