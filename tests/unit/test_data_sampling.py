"""Step-indexed sampling: pure functions of (seed, step, slot), independent of world size."""
import numpy as np
import pytest

from trainer.data.sampling import (
    STEPS_PER_DRAW,
    Mixture,
    StepSampler,
    evenly_spaced_offsets,
    micro_batch_indices,
    micro_batch_slots,
    rank_val_batches,
    sample_keys,
    splitmix64,
    window_offsets,
)

M64 = (1 << 64) - 1


def splitmix64_reference(x: int) -> int:
    """Steele, Lea & Flood's splitmix64 output step, in Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def test_splitmix64_matches_the_reference_sequence():
    # The first outputs of a splitmix64 generator seeded with 0 (widely published test vector).
    golden = 0x9E3779B97F4A7C15
    assert [int(v) for v in splitmix64(np.array([0, golden], dtype=np.uint64))] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
    ]
    xs = np.random.default_rng(0).integers(0, 2**63, size=64, dtype=np.uint64) * np.uint64(2)
    assert [int(v) for v in splitmix64(xs)] == [splitmix64_reference(int(x)) for x in xs]


def test_window_offsets_are_a_pure_function_of_seed_step_slot():
    slots = np.arange(64, dtype=np.uint64)
    a = window_offsets(1337, 10, slots, 10_000)
    assert np.array_equal(a, window_offsets(1337, 10, slots, 10_000))
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 10_000
    # one slot alone gives the same window as within the batch
    assert window_offsets(1337, 10, slots[5:6], 10_000)[0] == a[5]
    assert not np.array_equal(a, window_offsets(1337, 11, slots, 10_000))
    assert not np.array_equal(a, window_offsets(1338, 10, slots, 10_000))
    # the hash spreads: keys of neighbouring slots and steps are all distinct
    keys = np.concatenate([sample_keys(0, s, slots) for s in range(16)])
    assert len(np.unique(keys)) == keys.size


def test_offsets_cover_the_stream_uniformly():
    offsets = np.concatenate([window_offsets(7, s, np.arange(1000), 100) for s in range(20)])
    counts = np.bincount(offsets, minlength=100)
    assert counts.min() > 120 and counts.max() < 280  # expected 200 each


def test_slots_partition_the_global_batch_by_micro_step_then_rank():
    assert list(micro_batch_slots(0, 2, 1, 4)) == [4, 5, 6, 7]
    assert list(micro_batch_slots(1, 2, 0, 4)) == [8, 9, 10, 11]
    for world, accum in [(1, 4), (2, 2), (4, 1)]:
        slots = np.concatenate([micro_batch_slots(a, world, r, 3) for a in range(accum) for r in range(world)])
        assert sorted(slots.tolist()) == list(range(12))


@pytest.mark.parametrize("world,accum", [(2, 1), (4, 1), (2, 2)])
def test_global_batch_is_the_same_for_any_world_size_and_accumulation(world, accum):
    """A global batch of 32: 1 rank x 4 micro-batches of 8 == `world` ranks x `accum` micro-batches."""
    reference = np.concatenate(micro_batch_indices(99, 5, accumulate=4, world_size=1, rank=0, batch_size=8,
                                                   num_windows=50_000))
    per_rank_batch = 32 // (world * accum)
    parts = [
        micro_batch_indices(99, 5, accum, world, r, per_rank_batch, 50_000)[a]
        for a in range(accum)
        for r in range(world)
    ]
    assert np.array_equal(np.concatenate(parts), reference)


def test_step_sampler_starts_at_the_step_read_when_iteration_begins():
    step = {"now": 0}
    sampler = StepSampler(lambda: step["now"], max_steps=6, seed=3, accumulate=2, world_size=2, rank=1,
                          batch_size=4, num_windows=1000)
    assert len(sampler) == 12  # the whole run: Lightning counts restored batches towards it
    first_run = list(sampler)
    assert len(first_run) == 12
    step["now"] = 4  # e.g. restored from a checkpoint after the sampler was built
    resumed = list(sampler)
    assert len(resumed) == 4
    for got, want in zip(resumed, first_run[8:]):
        assert np.array_equal(got, want)
    assert np.array_equal(resumed[0], micro_batch_indices(3, 4, 2, 2, 1, 4, 1000)[0])


def test_validation_batches_are_fixed_and_equal_in_number_across_ranks():
    offsets = evenly_spaced_offsets(10, 1000)
    assert offsets[0] == 0 and offsets[-1] == 999 and np.all(np.diff(offsets) > 0)
    assert np.array_equal(evenly_spaced_offsets(1, 5), [0])
    for world in (1, 2, 3, 4):
        per_rank = [rank_val_batches(offsets, world, r, batch_size=2) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
        seen = np.concatenate([np.concatenate(b) for b in per_rank])
        assert set(seen.tolist()) == set(offsets.tolist())
        assert len(seen) - len(offsets) < world  # padding only to even out the ranks
    assert all(np.array_equal(a, b) for a, b in zip(rank_val_batches(offsets, 3, 1, 2), rank_val_batches(offsets, 3, 1, 2)))


@pytest.mark.parametrize("space", [1000, Mixture((100, 50, 30), (1.0, 2.0, 3.0))])
def test_step_sampler_draws_many_steps_at_once_with_the_per_step_values(space):
    """The sampler computes STEPS_PER_DRAW steps per call: the same windows as micro_batch_indices, step by step,
    across chunk boundaries and from a resumed step."""
    start, end = 5, 5 + 2 * STEPS_PER_DRAW + 3
    sampler = StepSampler(lambda: start, end, seed=7, accumulate=2, world_size=2, rank=1, batch_size=4, num_windows=space)
    expected = [b for step in range(start, end) for b in micro_batch_indices(7, step, 2, 2, 1, 4, space)]
    got = list(sampler)
    assert len(got) == len(expected) == (end - start) * 2
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
