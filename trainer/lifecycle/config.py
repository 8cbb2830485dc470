"""The lifecycle's typed config sections: each default written once, here.

`data.quality` (pulled into the text data configs by their defaults list), and the top-level
`registry`, `promote` and `pipeline` sections of the training config (the pipeline composes the
training config, so one command line sets both). The small tools (`trainer.promote`,
`trainer.drift`) take the same keys as key=value arguments, typed from these dataclasses
(trainer/cli_args.py: keys_of).

Imports nothing of the project: the config package registers these in Hydra's ConfigStore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

ON_FAIL = ("error", "warn")
PROMOTE_METRICS = ("loss", "bits_per_byte")  # lower is better for both
PIPELINE_STEPS = ("data_check", "train", "evaluate", "export", "promote")
TRIGGERS = ("always", "drift")


@dataclass
class DataQualityConfig:
    """Corpus-level thresholds. A check fails when the share of documents with a problem is above its bar.

    The per-document anchors are Gopher's (Rae et al. 2021, App. A: MassiveWeb quality filter and
    near-duplicate removal): 50..100,000 words, mean word length 3..10 characters, MinHash over
    13-word shingles with Jaccard similarity >= 0.8. The corpus-level shares are ours: generous
    enough that this interpreter's own stdlib sources (the default corpus: code, so some short
    files and long identifiers) pass, tight enough that a broken extraction does not.
    """

    enabled: bool = True  # run before every training run (text data only; cached per data fingerprint)
    on_fail: str = "error"  # error: stop before training | warn: print the failures and train
    min_documents: int = 2  # the train/validation split is by document
    max_empty_fraction: float = 0.01  # empty or whitespace-only documents
    max_undecodable_fraction: float = 0.01  # documents with bytes that are not UTF-8 (read as U+FFFD)
    max_exact_duplicate_fraction: float = 0.05  # copies beyond the first of identical documents
    max_near_duplicate_fraction: float = 0.10  # documents beyond the first of each near-duplicate cluster
    max_leaked_val_fraction: float = 0.01  # validation documents with an exact or near copy in train
    near_duplicate_jaccard: float = 0.8  # Gopher
    shingle_words: int = 13  # Gopher
    num_perm: int = 128  # MinHash permutations (datasketch); more: slower, tighter estimates
    min_words: int = 50  # Gopher
    max_words: int = 100_000  # Gopher
    max_length_outlier_fraction: float = 0.10  # documents outside [min_words, max_words]
    min_mean_word_length: float = 3.0  # Gopher
    max_mean_word_length: float = 10.0  # Gopher
    max_word_length_outlier_fraction: float = 0.10  # documents whose mean word length is outside the range
    seed: int = 1  # MinHash permutations: fixed, so a report is a pure function of the corpus


@dataclass
class DriftConfig:
    """Drift thresholds, Evidently-like: PSI 0.1 and Jensen-Shannon distance 0.1."""

    psi_threshold: float = 0.1  # population stability index of document length (characters)
    js_threshold: float = 0.1  # Jensen-Shannon distance (base 2, in [0, 1]) of the token unigram distributions
    byte_fallback_threshold: float = 0.1  # rise in the share of single-byte tokens (BPE) from reference to current
    new_vocab_threshold: float = 0.1  # share of word occurrences unseen in the reference, above the reference's own
    psi_bins: int = 10  # quantile bins of the reference
    min_documents: int = 500  # fewer on either side: PSI is mostly noise (~0.036 on identical data at 500), not judged


@dataclass
class RegistryConfig:
    # MLflow tracking/registry URI. None: the embedded default, sqlite:///<paths.runs_dir>/registry/mlflow.db.
    # A team: http(s)://your-mlflow-server (artifacts go to the server's artifact store).
    uri: Optional[str] = None
    # The append-only decision log (JSON lines). None: <paths.runs_dir>/registry/decisions.jsonl.
    decision_log: Optional[str] = None
    wandb_link: bool = True  # also link promoted versions into the W&B Registry when W&B is online
    lock_timeout_s: float = 900.0  # waiting for another promotion of the same registry
    request_timeout_s: float = 10.0  # a remote registry that does not answer in this time is unreachable


@dataclass
class PromoteConfig:
    metric: str = "loss"  # loss (nats/token) | bits_per_byte; lower is better
    # Promote only if champion - candidate > min_delta (strictly better by more than this).
    min_delta: float = 0.0
    # With no champion yet the candidate must reach this bar (same metric). None: no bar, and the first
    # promotion is refused until you set one.
    max_loss: Optional[float] = None
    require_approval: bool = False  # register as pending; a person runs `promote approve VERSION --by --reason`
    eval_tokens: Optional[str] = None  # a fixed held-out token set; None: the candidate's validation split
    eval_max_tokens: Optional[int] = None  # evaluate on at most this many tokens of it (the same for both)


@dataclass
class PipelineConfig:
    """`python -m trainer.pipeline [pipeline=retrain]`: steps run in order, each skipped when up to date."""

    name: str = "retrain"  # names the run dirs: <runs_dir>/<run.name>/<name>-<hash of the inputs>
    steps: List[str] = field(default_factory=lambda: list(PIPELINE_STEPS))
    model_name: Optional[str] = None  # the registered model; None: run.name
    trigger: str = "always"  # always | drift: run only when `current` data drifted from drift_reference
    drift_reference: Optional[str] = None  # a run dir or data path (trigger=drift)
    drift: DriftConfig = field(default_factory=DriftConfig)
    stop_after: Optional[str] = None  # drills and tests: end after this step, as a kill between steps would


# --------------------------------------------------------------------------- validation (ranges; UserError names the key)
def check_quality_config(q, prefix: str = "data.quality") -> None:
    _one_of(f"{prefix}.on_fail", q.on_fail, ON_FAIL)
    for key in ("max_empty_fraction", "max_undecodable_fraction", "max_exact_duplicate_fraction",
                "max_near_duplicate_fraction", "max_leaked_val_fraction", "max_length_outlier_fraction",
                "max_word_length_outlier_fraction"):
        _fraction(f"{prefix}.{key}", getattr(q, key))
    if not 0.0 < q.near_duplicate_jaccard <= 1.0:
        _fail(f"{prefix}.near_duplicate_jaccard must be in (0, 1], got {q.near_duplicate_jaccard}")
    for key in ("min_documents", "shingle_words", "num_perm", "min_words", "max_words"):
        if getattr(q, key) < 1:
            _fail(f"{prefix}.{key} must be >= 1, got {getattr(q, key)}")
    if q.max_words < q.min_words:
        _fail(f"{prefix}.max_words={q.max_words} is below {prefix}.min_words={q.min_words}")
    if not 0 < q.min_mean_word_length <= q.max_mean_word_length:
        _fail(f"{prefix}.min_mean_word_length={q.min_mean_word_length} must be > 0 and <= "
              f"{prefix}.max_mean_word_length={q.max_mean_word_length}")


def check_drift_config(d, prefix: str = "drift") -> None:
    for key in ("psi_threshold", "js_threshold", "byte_fallback_threshold", "new_vocab_threshold"):
        if getattr(d, key) <= 0:
            _fail(f"{prefix}.{key} must be > 0, got {getattr(d, key)}")
    if d.psi_bins < 2:
        _fail(f"{prefix}.psi_bins must be >= 2, got {d.psi_bins}")
    if d.min_documents < 1:
        _fail(f"{prefix}.min_documents must be >= 1, got {d.min_documents}")


def check_promote_config(p, prefix: str = "promote") -> None:
    _one_of(f"{prefix}.metric", p.metric, PROMOTE_METRICS)
    if p.min_delta < 0:
        _fail(f"{prefix}.min_delta must be >= 0 (how much better than the champion), got {p.min_delta}")
    if p.max_loss is not None and p.max_loss <= 0:
        _fail(f"{prefix}.max_loss must be a positive bar (or null), got {p.max_loss}")
    if p.eval_max_tokens is not None and p.eval_max_tokens < 2:
        _fail(f"{prefix}.eval_max_tokens must be >= 2 (or null for all), got {p.eval_max_tokens}")


def check_registry_config(r, prefix: str = "registry") -> None:
    for key in ("lock_timeout_s", "request_timeout_s"):
        if getattr(r, key) <= 0:
            _fail(f"{prefix}.{key} must be > 0 seconds, got {getattr(r, key)}")


def check_pipeline_config(p, prefix: str = "pipeline") -> None:
    unknown = [s for s in p.steps if s not in PIPELINE_STEPS]
    if unknown or not p.steps:
        _fail(f"{prefix}.steps={list(p.steps)}: steps are chosen from {', '.join(PIPELINE_STEPS)} (in that order)")
    if list(p.steps) != [s for s in PIPELINE_STEPS if s in p.steps]:
        _fail(f"{prefix}.steps={list(p.steps)} are out of order: they run as {', '.join(PIPELINE_STEPS)}")
    _one_of(f"{prefix}.trigger", p.trigger, TRIGGERS)
    if p.trigger == "drift" and not p.drift_reference:
        _fail(f"{prefix}.trigger=drift needs {prefix}.drift_reference=RUN_DIR_OR_DATA (what the new data is compared with)")
    if p.stop_after is not None and p.stop_after not in p.steps:
        _fail(f"{prefix}.stop_after={p.stop_after!r} is not one of the steps {list(p.steps)}")
    check_drift_config(p.drift, f"{prefix}.drift")


def quality_of(data) -> DataQualityConfig | None:
    """The data check's settings of a `data` section: None for data modules that are not text corpora;
    for text, data.quality with the schema's defaults for every key it leaves out (absent or null: all)."""
    if data is None or data.get("_target_") != "trainer.data.TokenDataModule":
        return None
    from dataclasses import fields

    from omegaconf import DictConfig, OmegaConf

    given = data.get("quality")
    given = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given or {})
    names = [f.name for f in fields(DataQualityConfig)]
    unknown = [k for k in given if k not in names]
    if unknown:
        from trainer.errors import closest

        _fail(f"unknown config key 'data.quality.{unknown[0]}'.{closest(unknown[0], names)} Valid keys: {', '.join(names)}.")
    q = DataQualityConfig(**given)
    check_quality_config(q)
    return q


def check_lifecycle_config(cfg) -> None:
    """The lifecycle sections of a composed training config."""
    quality_of(cfg.get("data"))
    check_registry_config(cfg.registry)
    check_promote_config(cfg.promote)
    if cfg.get("pipeline") is not None:
        check_pipeline_config(cfg.pipeline)


def _fail(message: str) -> None:
    from trainer.errors import UserError

    raise UserError(message)


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        _fail(f"{key} must be a fraction in [0, 1], got {value}")


def _one_of(key: str, value, options) -> None:
    if value not in options:
        from trainer.errors import closest

        _fail(f"{key}={value!r} is not one of {', '.join(options)}.{closest(str(value), options)}")
