"""The run configuration's schema: one dataclass per section, each default written here once.

Hydra composes configs/train.yaml with its groups and the command line over `TrainConfig`
(registered in Hydra's ConfigStore as `train_schema`), so an unknown key or a wrong type fails at
composition. YAML option files say only what differs from these defaults. `model` and `data` are
open `_target_` sections (the user's own classes plug in there), and so are `optim` and `scheduler`
(`_partial_` targets: any torch.optim class and LR scheduler); their schema is the target's
constructor signature (or its `config_class`), checked in validate.py. `logger` and `callbacks` are
named collections of `_target_` entries (an entry set to false or null is off).

This module imports nothing of the project: it loads before torch, and every layer may use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

# Model constructor arguments that may stay null in the config: the trainer fills them from the data.
DATA_DERIVED = ("vocab_size", "num_features", "num_classes")
KERNEL_MODES = ("auto", "fused", "reference")
STRATEGIES = ("single", "ddp", "fsdp", "fsdp2", "deepspeed")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
PLAN_CHECKS = ("error", "warn", "off")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
# torch.compile modes: reduce-overhead replays the compiled forward and backward as CUDA graphs (shapes
# are static here), max-autotune also benchmarks matmul kernels at compile time (minutes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHECKSUMS = ("sha256", "size")
# Logger constructor arguments that may stay null in the config: the trainer fills them from the run
# (its folder for that logger, the run's name, W&B id and group, the resolved config).
RUN_DERIVED = ("save_dir", "name", "id", "group", "config")
LAUNCHER_KINDS = ("torchrun", "slurm", "k8s")
RESTART_POLICIES = ("OnFailure", "Always", "ExitCode", "Never")


@dataclass
class RunConfig:
    name: str = "default"  # experiment name: the run dir is <paths.runs_dir>/<name>/<id>
    id: Optional[str] = None  # None: from the launcher's job id, else a new timestamped id
    dir: Optional[str] = None  # place the run dir exactly (overrides runs_dir/name/id)
    stop_after_steps: Optional[int] = None  # end after this step with a checkpoint, as an interruption would
    resume: bool = True  # resume from the newest valid checkpoint in the run dir
    resume_from: Optional[str] = None  # an explicit checkpoint directory to start from
    # One job per run dir (tracking/run_lock.py): a lock holder on another host (or container) that has not
    # refreshed its heartbeat for this long is presumed dead and its lock is taken over.
    lock_stale_after_s: float = 120.0
    group: Optional[str] = None  # runs that belong together (the W&B group); None: run.name, or the sweep in -m
    objective: Optional[str] = None  # in a -m sweep, the run-summary value returned to the sweeper (final_val_loss)


@dataclass
class TrainerConfig:
    max_steps: int = 300  # optimizer steps; also the length of the LR schedule
    devices: int = 1  # processes (CPU) or GPUs per node
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0  # global-norm clipping; 0 turns it off
    val_every_steps: int = 50
    log_every_steps: int = 10
    compile: bool = False  # torch.compile: the whole net, or each transformer block under fsdp2
    # Recompute activations in backward, per transformer block: none | full (keep only each block's input)
    # | selective (keep matmul and attention outputs, recompute norms, rotary and activations)
    activation_checkpointing: str = "none"
    compile_mode: str = "default"  # with compile: one of COMPILE_MODES
    progress_bar: bool = True
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads per process on CPU (None: OMP_NUM_THREADS, else this process's CPUs / local ranks)
    # Any other pl.Trainer argument, passed through (trainer.extra.limit_val_batches=4); checked against
    # pl.Trainer's signature, and refused for the ones the settings above (or the trainer itself) own.
    extra: Dict[str, Any] = field(default_factory=dict)


def _keyword_field(name: str, annotation: type, default: Any) -> Callable[[type], type]:
    """Add a field whose name is a Python keyword (`checkpoint.async`), which a class body cannot spell.

    It is set after construction (init=False); OmegaConf reads, types and fills it like any other field."""

    def add(cls: type) -> type:
        cls.__annotations__[name] = annotation
        setattr(cls, name, field(default=default, init=False, repr=False, compare=False))
        return cls

    return add


@dataclass
# async=true: the loop blocks only to copy the state to host memory; a background thread writes it, and
# the manifest and the rename follow once the write is complete (trainer/checkpoint/async_writer.py).
@_keyword_field("async", bool, False)
class CheckpointConfig:
    every_n_steps: int = 100
    keep_last: int = 3
    # Checkpoint dirs nothing will load - set aside when a step was saved again (step-N.replaced-<time>), failing
    # verification, or unfinished (.tmp-step-N) - are kept for inspection, the most recent this many; the rest is
    # deleted at each save, each named in the log.
    keep_set_aside: int = 2
    checksum: str = "sha256"  # sha256 | size (size-only verification for very large checkpoints)
    save_final: bool = True
    # Fault injection (tests, drills): sleep this long inside every save, after the state is written and
    # before the manifest and the rename, so a kill can land while the save is unfinished.
    debug_pause_in_save_s: float = 0.0


@dataclass
class StrategyConfig:
    name: str = "single"  # single | ddp | fsdp | fsdp2 | deepspeed (configs/strategy/ has one file per choice)
    zero_stage: int = 0  # deepspeed only: 1, 2 or 3
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    fsdp_sharding: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
    fsdp_state_dict: str = "sharded"  # sharded | full
    # fsdp2: free each block's gathered parameters after its forward (ZeRO-3); false keeps them to backward (ZeRO-2)
    fsdp2_reshard_after_forward: bool = True
    timeout_s: int = 1800  # collective timeout
    # Merged over the generated DeepSpeed JSON: a mapping, or the path of a JSON file (read when the config is
    # composed; the frozen config.yaml holds its contents).
    deepspeed_config: Any = field(default_factory=dict)


@dataclass
class PlanConfig:
    """The memory and time plan (`python -m trainer.plan`), also checked before every launch."""

    check: str = "error"  # error | warn | off: what a launch does when the plan predicts it will not fit
    device_memory_gb: Optional[float] = None  # per device; None: the visible GPU's, else the table's for plan.device
    device: Optional[str] = None  # a device name for the table (e.g. "H100 SXM"); None: the visible GPU's name
    interconnect_gbps: Optional[float] = None  # per-device collective bandwidth, GB/s; None: by device
    internode_gbps: float = 25.0  # per-device share of the network between nodes, GB/s (400 Gb/s InfiniBand per GPU: 50)
    mfu: float = 0.4  # the fraction of the dense peak a step reaches, for the time estimate


@dataclass
class PathsConfig:
    runs_dir: str = "${oc.env:TRAINER_RUNS_DIR,runs}"  # run dirs go under <runs_dir>/<run.name>/<run.id>
    cache_dir: str = "${oc.env:TRAINER_CACHE,'~/.cache/trainer'}"  # token shards, compiled kernels (node-local)


@dataclass
class ObservabilityConfig:
    enabled: bool = True
    nvml_interval_s: float = 2.0  # background NVML/psutil sampling period (one sampler per node)
    straggler_every_n_steps: int = 50  # ranks exchange step times every N optimizer steps
    straggler_margin: float = 0.2  # a rank whose busy time exceeds the median by this fraction is a straggler
    verdict_every_n_steps: int = 100  # bottleneck verdict at this interval (and always at the end)
    warmup_steps: int = 3  # first steps left out of the statistics (compilation, allocator warm-up)
    window_steps: int = 100  # the verdict looks at the most recent N measured steps
    peak_tflops: Optional[float] = None  # per-device dense peak for MFU; None: from the device table
    input_bound_fraction: float = 0.2  # data wait above this share of the step: input-bound
    comm_bound_fraction: float = 0.25  # exposed communication above this share: communication-bound
    compute_bound_fraction: float = 0.7  # forward+backward+optimizer above this share: compute-bound
    memory_pressure_fraction: float = 0.95  # reserved (or NVML used) memory above this share of the device
    throttle_fraction: float = 0.2  # throttle reasons active in more than this share of GPU samples
    write_step_records: bool = True  # per-step JSON lines in <run_dir>/perf/rank<k>.jsonl


@dataclass
class ProfilerConfig:
    """torch.profiler over a window of training steps (`profiler=torch`; expensive while active)."""

    start_step: int = 10  # first optimizer step profiled (leave a few steps of warm-up)
    num_steps: int = 3
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    row_limit: int = 25  # rows in the top-kernels table


@dataclass
class DebugConfig:
    """Knobs that make a run misbehave on purpose, to check the performance verdicts."""

    straggler_rank: Optional[int] = None  # this rank sleeps in every training batch (debug=straggler)
    straggler_delay_s: float = 0.2


@dataclass
class LauncherConfig:
    kind: str = "torchrun"  # torchrun | slurm | k8s
    job_name: Optional[str] = None  # None: run.name
    nodes: Optional[int] = None  # None: trainer.num_nodes; if set it must agree with it
    gpus_per_node: Optional[int] = None  # None: trainer.devices (0 on a CPU run); if set it must agree
    min_nodes: Optional[int] = None  # elastic: torchrun --nnodes=min:max, PyTorchJob minReplicas
    max_restarts: int = 3  # torchrun --max-restarts / PyTorchJob elasticPolicy.maxRestarts
    # torchrun
    rdzv_endpoint: Optional[str] = None  # HOST:PORT of the c10d store (multi-node); None on one node: --standalone
    rdzv_id: Optional[str] = None  # same on every node; the trainer's run id derives from it
    local_addr: Optional[str] = None  # this node's reachable address when its hostname resolves to loopback
    rdzv_is_host: Optional[bool] = None  # force which node hosts the c10d store (--rdzv-conf=is_host=...)
    # SLURM
    time: str = "04:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    cpus_per_task: Optional[int] = None  # per rank; None: cpus_per_rank() (data.num_workers + 1)
    mem: Optional[str] = None  # e.g. 0 for the whole node, 400G
    signal_seconds: int = 120  # USR1 this long before the time limit: time to save a checkpoint
    requeue: bool = True
    log_dir: Optional[str] = None  # sbatch stdout/stderr; None: <paths.runs_dir>/<run.name>/slurm
    sbatch_extra: List[str] = field(default_factory=list)  # verbatim `#SBATCH` options, e.g. ["--exclusive"]
    # containers (SLURM via pyxis/enroot, Kubernetes)
    image: Optional[str] = None
    container_mounts: List[str] = field(default_factory=list)  # SRC:DST[:FLAGS]
    workdir: str = "/workspace"  # inside the container
    # Kubernetes
    namespace: str = "default"
    shm_size: Optional[str] = None  # /dev/shm for the loader workers and NCCL; None: sized from the config
    wandb_secret: Optional[str] = "wandb"  # Secret holding the W&B key (key: api-key); None: no W&B credentials
    runs_volume_claim: Optional[str] = None  # PVC mounted as the runs dir, shared by every pod and restart
    restart_policy: str = "OnFailure"  # OnFailure | Always | ExitCode | Never
    # Time a pod gets from SIGTERM (an eviction) to SIGKILL: the step in progress, the preemption
    # checkpoint and its upload. None: estimated from the checkpoint's size (see launch/k8s.py).
    termination_grace_s: Optional[int] = None
    checkpoint_write_mb_s: float = 200.0  # write speed per node assumed by that estimate (a network file system)
    run_as_user: int = 10001  # the image's unprivileged user (Dockerfile TRAINER_UID); pods never run as root
    resources: Dict[str, Any] = field(default_factory=dict)  # {requests: {...}, limits: {...}} over the derived ones
    node_selector: Dict[str, str] = field(default_factory=dict)
    tolerations: List[Dict[str, Any]] = field(default_factory=list)
    queue: Optional[str] = None  # a Kueue LocalQueue: the label kueue.x-k8s.io/queue-name
    labels: Dict[str, str] = field(default_factory=dict)  # extra labels on the job and its pods
    pod_template: Optional[str] = None  # a YAML file deep-merged over the rendered pod template (containers by name)
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for every rank (no secrets here)


# --------------------------------------------------------------------------- the model lifecycle (trainer/lifecycle)
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


@dataclass
class TrainConfig:
    seed: int = 1337
    kernels: str = "auto"  # auto | fused | reference (trainer/ops)
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: Any = None  # {_target_: a torch.optim class, _partial_: true, lr: ...}: configs/optim/
    scheduler: Any = None  # {_target_: an LR scheduler, _partial_: true, ...}, stepped every optimizer step; null: none
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: Dict[str, Any] = field(default_factory=dict)  # name -> {_target_: a Lightning logger, ...} | false
    callbacks: Dict[str, Any] = field(default_factory=dict)  # name -> {_target_: a Lightning callback, ...} | false
    paths: PathsConfig = field(default_factory=PathsConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    profiler: Optional[ProfilerConfig] = None  # profiler=torch turns it on
    debug: DebugConfig = field(default_factory=DebugConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    model: Any = None  # {_target_: ..., **constructor kwargs}
    data: Any = None  # {_target_: ..., **constructor kwargs}
    module: Any = None  # optional {_target_: a LightningModule} replacing the built-in one
    launcher: Optional[LauncherConfig] = None  # set by `+launcher=torchrun|slurm|k8s` (launch/)
    registry: RegistryConfig = field(default_factory=RegistryConfig)  # where promoted models go (trainer/lifecycle)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    pipeline: Optional[PipelineConfig] = None  # set by `pipeline=retrain` (python -m trainer.pipeline)


def cpus_per_rank(cpus_per_task: Optional[int], num_workers: Optional[int]) -> int:
    """CPUs a SLURM task (one rank) asks for: launcher.cpus_per_task, else one per data loader worker and
    one for the rank itself. launch.slurm and the Hydra submitit sweep (`${cpus_per_rank:...}`) both use it."""
    return int(cpus_per_task) if cpus_per_task else int(num_workers or 0) + 1


def register_schema() -> None:
    from omegaconf import OmegaConf
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # Text data configs pull this in (`defaults: [quality: default]`) as data.quality.
    cs.store(group="data/quality", name="default", node=DataQualityConfig)
    # configs/hydra/launcher/slurm.yaml derives cpus_per_task the way launch.slurm does.
    OmegaConf.register_new_resolver("cpus_per_rank", cpus_per_rank, replace=True)
