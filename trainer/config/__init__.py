"""The run configuration: schema (schema.py), composition (compose.py), validation (validate.py).

Imports nothing of the project but `trainer.errors`; every layer above may use it.
"""
from trainer.config.compose import (
    CONFIG_DIR,
    complete_target_sections,
    compose_config,
    compose_unchecked,
    config_dir_overrides,
    explain_hydra_error,
    group_options,
    normalize_overrides,
    schema_keys,
    split_config_dir,
)
from trainer.config.schema import (
    DATA_DERIVED,
    RUN_DERIVED,
    CheckpointConfig,
    DataQualityConfig,
    DebugConfig,
    DriftConfig,
    LauncherConfig,
    ObservabilityConfig,
    PathsConfig,
    PipelineConfig,
    PlanConfig,
    ProfilerConfig,
    PromoteConfig,
    RegistryConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
    cpus_per_rank,
)
from trainer.config.validate import (
    check_drift_config,
    check_pipeline_config,
    check_promote_config,
    check_quality_config,
    check_registry_config,
    check_target,
    import_target,
    quality_of,
    signature_params,
    validate,
    validate_launcher,
)

__all__ = [
    "CONFIG_DIR", "DATA_DERIVED", "RUN_DERIVED", "CheckpointConfig", "DataQualityConfig", "DebugConfig", "DriftConfig",
    "LauncherConfig", "ObservabilityConfig", "PathsConfig", "PlanConfig", "PipelineConfig", "ProfilerConfig",
    "PromoteConfig", "RegistryConfig", "RunConfig", "StrategyConfig", "TrainConfig", "TrainerConfig",
    "check_drift_config", "check_pipeline_config", "check_promote_config", "check_quality_config",
    "check_registry_config", "check_target", "complete_target_sections", "compose_config", "compose_unchecked",
    "config_dir_overrides", "cpus_per_rank", "explain_hydra_error", "group_options", "import_target", "normalize_overrides",
    "quality_of", "schema_keys", "signature_params", "split_config_dir", "validate", "validate_launcher",
]
