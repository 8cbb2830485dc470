"""Weighted mixtures of sources: drawn by (seed, step, slot), so resume and other world sizes see the same
samples; the realised shares follow the weights; validation covers every source; bad specs are user errors."""
from pathlib import Path

import numpy as np
import pytest

from trainer.data import TokenDataModule
from trainer.data.sampling import Mixture, micro_batch_indices, realised_mixture, sample_keys, window_offsets
from trainer.errors import UserError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def letter_corpus(root: Path, letter: str, n_docs: int = 10, size: int = 400) -> Path:
    """Documents made of one letter only, so every token tells which source it came from."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (root / f"{letter}{i}.txt").write_text(letter * (size + 7 * i))
    return root


@pytest.fixture
def three_sources(tmp_path):
    return [str(letter_corpus(tmp_path / c, c, size=400 * (k + 1))) for k, c in enumerate("abc")]


def mixture(paths, weights, cache, **kw):
    kw = {"seq_len": 16, "batch_size": 8, "val_fraction": 0.2, "val_batches": 3, **kw}
    dm = TokenDataModule(path=None, sources=[{"path": p, "weight": w} for p, w in zip(paths, weights)],
                         cache_dir=str(cache), **kw)
    dm.prepare_data()
    return dm


def sources_of(x) -> np.ndarray:
    """Which source each window of a batch came from (a=0, b=1, c=2), checking no window mixes two."""
    first = x[:, 0]
    assert (x == first[:, None]).all(), "a window crosses two sources"
    return first.numpy() - ord("a")


def test_the_mixture_is_a_pure_function_and_a_single_source_is_unchanged():
    mix = Mixture((1000, 50, 7), (0.5, 0.3, 0.2))
    slots = np.arange(256, dtype=np.uint64)
    ids = window_offsets(11, 3, slots, mix)
    assert np.array_equal(ids, window_offsets(11, 3, slots, mix))
    assert np.array_equal(ids[100:101], window_offsets(11, 3, slots[100:101], mix))  # slot by slot
    src, local = mix.split(ids)
    assert ((local >= 0) & (local < np.asarray(mix.num_windows)[src])).all()
    assert np.bincount(src, minlength=3).tolist() != [256, 0, 0]  # all three drawn
    # the source comes from the same key that a single source uses for its window
    assert np.array_equal(src, mix.sources_of_keys(sample_keys(11, 3, slots)))
    one = Mixture((1000,), (1.0,))
    assert (one.sources_of_keys(sample_keys(11, 3, slots)) == 0).all()


def test_realised_shares_follow_the_weights():
    mix = Mixture((100, 100, 100), (0.6, 0.3, 0.1))
    counts = realised_mixture(mix, seed=5, first_step=0, end_step=400, global_batch=64)
    shares = counts / counts.sum()
    # 25,600 draws: a share is within 4 standard deviations of its weight
    sd = np.sqrt(np.array([0.6, 0.3, 0.1]) * np.array([0.4, 0.7, 0.9]) / counts.sum())
    assert (np.abs(shares - [0.6, 0.3, 0.1]) < 4 * sd).all(), shares
    # weights are normalised: 6, 3, 1 is the same mixture
    assert np.array_equal(counts, realised_mixture(Mixture((100, 100, 100), (6, 3, 1)), 5, 0, 400, 64))


def test_mixture_batches_come_from_the_sources_in_proportion_and_never_cross_them(tmp_path, three_sources):
    dm = mixture(three_sources, [0.5, 0.3, 0.2], tmp_path / "cache")
    seen = np.concatenate([sources_of(dm.train_batch(step)[0]) for step in range(150)])
    shares = np.bincount(seen, minlength=3) / len(seen)
    assert np.allclose(shares, [0.5, 0.3, 0.2], atol=0.04), shares
    # the recomputed (logged) mixture is exactly what the batches held
    realised = dm.realised_mixture(150)
    assert [m["samples"] for m in realised] == np.bincount(seen, minlength=3).tolist()
    assert [m["weight"] for m in realised] == pytest.approx([0.5, 0.3, 0.2])


def test_mixture_is_the_same_for_any_world_size_and_on_resume(tmp_path, three_sources):
    dm = mixture(three_sources, [1, 1, 2], tmp_path / "cache")
    for step in (0, 7, 31):
        one = np.concatenate([dm.train_batch(step, a, accumulate=4, world_size=1)[0].numpy() for a in range(4)])
        two = np.concatenate([dm.train_batch(step, a, accumulate=2, world_size=2, rank=r)[0].numpy()
                              for a in range(2) for r in range(2)])
        four = np.concatenate([dm.train_batch(step, 0, accumulate=1, world_size=4, rank=r)[0].numpy() for r in range(4)])
        assert np.array_equal(one, two) and np.array_equal(one, four)
    # a resumed run recomputes the same micro-batches from the step alone
    again = mixture(three_sources, [1, 1, 2], tmp_path / "cache")
    assert not again.built_shards
    assert np.array_equal(again.train_batch(31, 1, accumulate=2)[0], dm.train_batch(31, 1, accumulate=2)[0])


def test_validation_covers_every_source_by_weight(tmp_path, three_sources):
    dm = mixture(three_sources, [0.79, 0.2, 0.01], tmp_path / "cache")
    windows = dm.windows("val")
    batches = dm.val_offsets()
    assert sum(len(b) for b in batches) == 24
    seen = np.concatenate([sources_of(windows[b][0]) for b in batches])
    # 24 windows shared out by weight (18.96, 4.8, 0.24: largest remainders first), at least one each
    assert np.bincount(seen, minlength=3).tolist() == [19, 4, 1]
    assert [len(np.concatenate(dm.val_offsets(2, r))) for r in range(2)] == [12, 12]


def test_mixture_stats_and_fingerprint(tmp_path, three_sources):
    dm = mixture(three_sources, [0.5, 0.3, 0.2], tmp_path / "cache")
    stats = dm.corpus_stats()
    assert [s["weight"] for s in stats["sources"]] == [0.5, 0.3, 0.2]
    assert stats["train_tokens"] == sum(s["train_tokens"] for s in stats["sources"])
    # three one-letter sources: the mixture's unigram entropy is that of the weights
    assert stats["unigram_entropy_nats"] == pytest.approx(-sum(w * np.log(w) for w in (0.5, 0.3, 0.2)))
    # each source keeps its own shards (reused by any mixture); the weights are part of the mixture's name
    other = mixture(three_sources, [0.2, 0.3, 0.5], tmp_path / "cache")
    assert not other.built_shards and other.fingerprint != dm.fingerprint
    assert [s["shard_dir"] for s in other.corpus_stats()["sources"]] == [s["shard_dir"] for s in stats["sources"]]


@pytest.mark.parametrize(
    "sources, needle",
    [
        ([{"path": "A", "weight": 0}], r"data\.sources\[0\]\.weight=0 is invalid: a mixture weight must be a positive"),
        ([{"path": "A", "weight": 1}, {"path": "B", "weight": -0.5}], r"data\.sources\[1\]\.weight=-0\.5 is invalid"),
        ([{"path": "A", "weight": float("nan")}], r"data\.sources\[0\]\.weight=nan is invalid"),
        ([{"path": "A", "wieght": 1}], r"unknown key 'data\.sources\[0\]\.wieght'\. Did you mean 'weight'"),
        ([{"weight": 1}], r"data\.sources\[0\] has no path"),
        ([], r"data\.path is null and data\.sources is empty"),
        ([{"path": "A", "streaming": True}], r"data\.sources\[0\]\.streaming=true needs data\.sources\[0\]\.max_tokens"),
    ],
)
def test_bad_mixture_specs(sources, needle):
    with pytest.raises(UserError, match=needle):
        TokenDataModule(path=None, sources=sources)


def test_path_and_sources_together_or_neither(tmp_path):
    with pytest.raises(UserError, match=r"data\.path='stdlib' and data\.sources are both set.*data\.path=null"):
        TokenDataModule(path="stdlib", sources=[{"path": "A"}])
    with pytest.raises(UserError, match=r"data\.path is null and data\.sources is empty"):
        TokenDataModule(path=None)


def test_a_missing_source_is_named_by_its_index(tmp_path, three_sources):
    with pytest.raises(UserError, match=r"data\.sources\[1\]\.path=.*nowhere.* does not exist"):
        mixture([three_sources[0], str(tmp_path / "nowhere.txt")], [1, 1], tmp_path / "cache")


def test_micro_batches_of_a_mixture_partition_the_global_batch():
    mix = Mixture((500, 800), (0.3, 0.7))
    whole = np.concatenate(micro_batch_indices(9, 12, accumulate=4, world_size=1, rank=0, batch_size=6, num_windows=mix))
    split = np.concatenate([micro_batch_indices(9, 12, 2, 2, r, 6, mix)[a] for a in range(2) for r in range(2)])
    assert np.array_equal(whole, split)


def test_check_config_runs_the_constructor_checks_without_touching_files(tmp_path):
    TokenDataModule.check_config(path=str(tmp_path / "not-there-yet"), tokenizer="openai-community/gpt2")  # no IO
    with pytest.raises(UserError, match=r"data\.sources\[0\]\.weight=-1 is invalid"):
        TokenDataModule.check_config(path=None, sources=[{"path": "A", "weight": -1}])
