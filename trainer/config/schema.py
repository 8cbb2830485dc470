"""The run configuration's schema: one dataclass per section, each default written here once.

Hydra composes configs/train.yaml with its groups and the command line over `TrainConfig`
(registered in Hydra's ConfigStore as `train_schema`), so an unknown key or a wrong type fails at
composition. YAML option files say only what differs from these defaults. `model` and `data` are
open `_target_` sections (the user's own classes plug in there): their schema is the target's
constructor signature (or its `config_class`), checked in validate.py.

This module imports nothing of the project: it loads before torch, and every layer may use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Model constructor arguments that may stay null in the config: the trainer fills them from the data.
DATA_DERIVED = ("vocab_size", "num_features", "num_classes")
KERNEL_MODES = ("auto", "fused", "reference")
STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
# torch.compile modes: reduce-overhead replays the compiled forward and backward as CUDA graphs (shapes
# are static here), max-autotune also benchmarks matmul kernels at compile time (minutes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULES = ("cosine", "constant")
CHECKSUMS = ("sha256", "size")
WANDB_MODES = ("auto", "offline", "online", "disabled")
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
    compile: bool = False
    compile_mode: str = "default"  # with compile: one of COMPILE_MODES
    progress_bar: bool = True
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads per process on CPU (None: cores / local ranks)


@dataclass
class OptimConfig:
    """AdamW with decay on matrices only, linear warmup then cosine to lr * min_lr_ratio."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio


@dataclass
class CheckpointConfig:
    every_n_steps: int = 100
    keep_last: int = 3
    checksum: str = "sha256"  # sha256 | size (size-only verification for very large checkpoints)
    save_final: bool = True
    # Fault injection (tests, drills): sleep this long inside every save, after the state is written and
    # before the manifest and the rename, so a kill can land while the save is unfinished.
    debug_pause_in_save_s: float = 0.0


@dataclass
class StrategyConfig:
    name: str = "single"  # single | ddp | fsdp | deepspeed (configs/strategy/ has one file per choice)
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
    timeout_s: int = 1800  # collective timeout
    deepspeed_config: Dict[str, Any] = field(default_factory=dict)  # merged over the generated JSON


@dataclass
class LoggerConfig:
    wandb: bool = True
    wandb_mode: str = "auto"  # auto: online with an API key configured, else offline | offline | online | disabled
    project: str = "trainer"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    csv: bool = True


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
    cpus_per_task: Optional[int] = None
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
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for every rank (no secrets here)


@dataclass
class TrainConfig:
    seed: int = 1337
    kernels: str = "auto"  # auto | fused | reference (trainer/ops)
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    profiler: Optional[ProfilerConfig] = None  # profiler=torch turns it on
    debug: DebugConfig = field(default_factory=DebugConfig)
    model: Any = None  # {_target_: ..., **constructor kwargs}
    data: Any = None  # {_target_: ..., **constructor kwargs}
    module: Any = None  # optional {_target_: a LightningModule} replacing the built-in one
    launcher: Optional[LauncherConfig] = None  # set by `+launcher=torchrun|slurm|k8s` (launch/)


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
