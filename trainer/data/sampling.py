"""Step-indexed sampling: which token windows a micro-batch holds is a pure function.

A training sample is named by (seed, global optimizer step, slot), where the slots of one
step run over the global batch, 0 <= slot < batch_size * accumulate * world_size. Its window
start is a counter-based hash (splitmix64) of that triple, so any rank can compute any
step's micro-batch without state: resume is exact mid-epoch, and 1 process accumulating 2
micro-batches sees the same global batch as 2 processes accumulating 1.

Rank r's micro-step a (0 <= a < accumulate) takes the slots
    (a * world + r) * batch_size + i,   i in [0, batch_size).

With several sources (a weighted mixture) the same 64-bit key also picks the source: the key, as
a fraction of 2^64, against the cumulative normalised weights; the key modulo the source's window
count picks the window inside it. So the mixture too is a pure function of
(seed, step, slot), and the realised share of each source can be recomputed for any range of
steps without having recorded anything.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_MASK64 = (1 << 64) - 1
STEPS_PER_DRAW = 64  # the train sampler computes this many steps' window offsets per call


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 output function (Steele et al. 2014) applied to each uint64 counter."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, step: int | np.ndarray, slots: np.ndarray) -> np.ndarray:
    """64-bit hash of (seed, step, slot) for each slot: mix the seed, fold in the step, mix, fold in the slot, mix.

    With an array of steps, a (steps, slots) grid of the same keys: many steps in one call.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = splitmix64(np.uint64(seed & _MASK64))
        h = splitmix64(h ^ np.asarray(step, dtype=np.uint64))
        slots = np.asarray(slots, dtype=np.uint64)
        return splitmix64((h[:, None] if h.ndim else h) ^ slots)


def window_id(source: np.ndarray, offset: np.ndarray, num_sources: int) -> np.ndarray:
    """A mixture's window id: offset * num_sources + source (decoded with one divmod per batch)."""
    return np.asarray(offset, dtype=np.int64) * num_sources + np.asarray(source, dtype=np.int64)


@dataclass(frozen=True)
class Mixture:
    """Several sources' windows, drawn with these weights. A window id names (source, offset in
    that source's windows), see window_id."""

    num_windows: tuple[int, ...]
    weights: tuple[float, ...]  # positive; normalised here

    def __post_init__(self):
        if len(self.num_windows) != len(self.weights) or not self.num_windows:
            raise ValueError("a mixture needs one weight per source, and at least one source")
        if min(self.num_windows) <= 0 or min(self.weights) <= 0:
            raise ValueError(f"window counts and weights must be positive: {self.num_windows}, {self.weights}")

    @cached_property
    def shares(self) -> np.ndarray:
        w = np.asarray(self.weights, dtype=np.float64)
        return w / w.sum()

    @cached_property
    def _thresholds(self) -> np.ndarray:
        """Source s takes the keys in (thresholds[s-1], thresholds[s]]; the last is the largest key."""
        cut = [min(int(c * 2.0**64), (1 << 64) - 1) for c in np.cumsum(self.shares)[:-1]]
        return np.array([*cut, (1 << 64) - 1], dtype=np.uint64)

    @cached_property
    def _sizes(self) -> np.ndarray:
        return np.asarray(self.num_windows, dtype=np.uint64)

    def sources_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """The key as a fraction of 2^64 against the cumulative shares (the top bits decide)."""
        return np.searchsorted(self._thresholds, keys, side="left")

    def window_ids(self, keys: np.ndarray) -> np.ndarray:
        # The source comes from the key's top bits, the window from the key modulo the source's size: the
        # keys of one source fill an interval of ~share * 2^64 values, so the window is as uniform as alone.
        source = self.sources_of_keys(keys)
        return window_id(source, (keys % self._sizes[source]).view(np.int64), len(self.weights))

    def split(self, window_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, offset) of each window id."""
        offset, source = np.divmod(np.asarray(window_ids, dtype=np.int64), len(self.weights))
        return source, offset


def window_offsets(seed: int, step: int | np.ndarray, slots: np.ndarray, num_windows: int | Mixture) -> np.ndarray:
    """Start offsets (int64) of the windows for these slots; windows start in [0, num_windows)
    (with a Mixture: window ids, naming a source and an offset in it)."""
    keys = sample_keys(seed, step, slots)
    if isinstance(num_windows, Mixture):
        return num_windows.window_ids(keys)
    if num_windows <= 0:
        raise ValueError(f"num_windows must be positive, got {num_windows}")
    return (keys % np.uint64(num_windows)).astype(np.int64)


def realised_mixture(mixture: Mixture, seed: int, first_step: int, end_step: int, global_batch: int) -> np.ndarray:
    """Samples drawn from each source over optimizer steps [first_step, end_step): what training read."""
    counts = np.zeros(len(mixture.weights), dtype=np.int64)
    slots = np.arange(global_batch, dtype=np.uint64)
    for step in range(first_step, end_step):
        counts += np.bincount(mixture.sources_of_keys(sample_keys(seed, step, slots)), minlength=len(counts))
    return counts


def micro_batch_slots(micro_step: int, world_size: int, rank: int, batch_size: int) -> np.ndarray:
    """The global-batch slots that rank `rank` reads at micro-step `micro_step` of an optimizer step."""
    first = (micro_step * world_size + rank) * batch_size
    return np.arange(first, first + batch_size, dtype=np.uint64)


def micro_batch_indices(
    seed: int, step: int, accumulate: int, world_size: int, rank: int, batch_size: int, num_windows: int | Mixture
) -> list[np.ndarray]:
    """Window offsets of each of this rank's `accumulate` micro-batches at optimizer step `step`."""
    return [
        window_offsets(seed, step, micro_batch_slots(a, world_size, rank, batch_size), num_windows)
        for a in range(accumulate)
    ]


def evenly_spaced_offsets(count: int, num_windows: int) -> np.ndarray:
    """`count` window starts spread evenly over [0, num_windows): the fixed validation set."""
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return (np.arange(count, dtype=np.int64) * (num_windows - 1)) // (count - 1)


def rank_val_batches(offsets: np.ndarray, world_size: int, rank: int, batch_size: int) -> list[np.ndarray]:
    """This rank's share of the validation windows, in batches.

    Like torch's DistributedSampler, the list is padded by repeating its first windows so every
    rank runs the same number of batches: a ZeRO-3 forward is a collective, and a rank with one
    batch fewer would leave the others waiting forever.
    """
    per_rank = -(-len(offsets) // world_size)
    padded = np.resize(offsets, per_rank * world_size)  # np.resize repeats from the start
    mine = padded[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


class StepSampler(Sampler[np.ndarray]):
    """Yields, for each optimizer step from the trainer's current one up to max_steps, this
    rank's `accumulate` micro-batches as arrays of window offsets.

    The start step is read when iteration begins, not at construction: Lightning restores
    global_step from a checkpoint before it iterates the loader, and may iterate it again.
    """

    def __init__(
        self,
        current_step: Callable[[], int],
        max_steps: int,
        seed: int,
        accumulate: int,
        world_size: int,
        rank: int,
        batch_size: int,
        num_windows: int | Mixture,
    ):
        self.current_step = current_step
        self.max_steps, self.seed = max_steps, seed
        self.accumulate, self.world_size, self.rank = accumulate, world_size, rank
        self.batch_size, self.num_windows = batch_size, num_windows

    def __iter__(self) -> Iterator[np.ndarray]:
        # micro_batch_indices for STEPS_PER_DRAW steps at a time: the same values, a fraction of the calls.
        slots = np.concatenate([micro_batch_slots(a, self.world_size, self.rank, self.batch_size)
                                for a in range(self.accumulate)])
        for first in range(self.current_step(), self.max_steps, STEPS_PER_DRAW):
            steps = np.arange(first, min(first + STEPS_PER_DRAW, self.max_steps))
            offsets = window_offsets(self.seed, steps, slots, self.num_windows)  # (steps, accumulate * batch)
            for row in offsets.reshape(len(steps), self.accumulate, self.batch_size):
                yield from row

    def __len__(self) -> int:
        # The whole run is one epoch. On resume Lightning adds the micro-batches it had already
        # run this epoch (restored from the checkpoint) to its count of fetched batches and ends
        # the epoch when that count reaches len(loader); so the length is the run's total, not
        # what is left, while iteration starts at the restored step.
        return self.max_steps * self.accumulate


class TokenWindows(Dataset):
    """Reads batches of (seq_len + 1)-token windows from a memory-mapped token file.

    Indexed by an array of window offsets (one micro-batch) and returns (inputs, targets),
    LongTensors of shape (B, T), targets shifted by one. The memmap is opened lazily so the
    dataset pickles cheaply into DataLoader workers.
    """

    def __init__(self, path: Path, dtype: str, num_tokens: int, seq_len: int, delay_s: float = 0.0):
        self.path, self.dtype, self.num_tokens = Path(path), np.dtype(dtype), num_tokens
        self.seq_len, self.delay_s = seq_len, delay_s
        self._tokens: np.ndarray | None = None

    @property
    def num_windows(self) -> int:
        return self.num_tokens - self.seq_len

    def tokens(self) -> np.ndarray:
        """The token file, memory-mapped (as a plain ndarray view: cheaper to index than np.memmap)."""
        if self._tokens is None:
            self._tokens = np.asarray(np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,)))
        return self._tokens

    def __getitem__(self, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)  # debug knob: make the run input-bound on purpose
        offsets = np.asarray(offsets, dtype=np.int64)
        return read_windows([self.tokens()], np.zeros(len(offsets), dtype=np.int64), offsets, self.seq_len + 1)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


def read_windows(tokens: list[np.ndarray], source: np.ndarray, offsets: np.ndarray, n: int):
    """(inputs, targets), LongTensors (B, n - 1): row i is tokens[source[i]][offsets[i] : offsets[i] + n], shifted.

    Each window is a contiguous slice, copied row by row in the shards' dtype (in file order, kinder
    to the caches) and widened once: cheaper than a (B, n) fancy-index gather.
    """
    out = np.empty((len(offsets), n), dtype=tokens[0].dtype)
    order = np.lexsort((offsets, source))
    for row, s, o in zip(order.tolist(), source[order].tolist(), offsets[order].tolist()):
        out[row] = tokens[s][o : o + n]
    windows = torch.from_numpy(out.astype(np.int64))
    return windows[:, :-1], windows[:, 1:]


class MixtureWindows(Dataset):
    """Windows of several sources' token files, indexed by window ids (see window_id): each window
    lies inside one source, never across two."""

    def __init__(self, parts: Sequence[TokenWindows], delay_s: float = 0.0):
        self.parts, self.delay_s = list(parts), delay_s
        self.seq_len = self.parts[0].seq_len
        self._tokens: list[np.ndarray] | None = None

    def _open(self) -> list[np.ndarray]:
        self._tokens = [p.tokens() for p in self.parts]
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def __getitem__(self, window_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)
        offsets, source = np.divmod(np.asarray(window_ids, dtype=np.int64), len(self.parts))  # see window_id
        tokens = self._tokens if self._tokens is not None else self._open()
        return read_windows(tokens, source, offsets, self.seq_len + 1)


class StepIndexedDataLoader(DataLoader):
    """A DataLoader whose position is the trainer's global step, so it is resumable without state.

    It offers state_dict/load_state_dict so Lightning knows it is resumable (and does not warn
    about mid-epoch checkpoints); the state is the sampling identity, which is checked on load.
    """

    def __init__(self, *args, sampling_state: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampling_state = sampling_state

    def state_dict(self) -> dict:
        return dict(self.sampling_state)

    def load_state_dict(self, state_dict: dict) -> None:
        changed = {k: (v, self.sampling_state.get(k)) for k, v in state_dict.items() if self.sampling_state.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            warnings.warn(
                f"resuming with different training data ({detail}): the samples after resume are not the "
                "ones the checkpointed run would have seen",
                stacklevel=2,
            )
