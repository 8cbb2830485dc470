"""The run configuration: schema (schema.py), composition (compose.py), validation (validate.py).

Imports nothing of the project but `trainer.errors`; every layer above may use it.
"""
from trainer.config.compose import CONFIG_DIR, complete_target_sections, compose_config, compose_unchecked, explain_hydra_error, group_options, normalize_overrides, schema_keys
from trainer.config.schema import (
    DATA_DERIVED,
    CheckpointConfig,
    DataQualityConfig,
    DebugConfig,
    DriftConfig,
    LauncherConfig,
    LoggerConfig,
    ObservabilityConfig,
    OptimConfig,
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
    "CONFIG_DIR", "DATA_DERIVED", "CheckpointConfig", "DataQualityConfig", "DebugConfig", "DriftConfig", "LauncherConfig",
    "LoggerConfig", "ObservabilityConfig", "OptimConfig", "PathsConfig", "PlanConfig", "PipelineConfig", "ProfilerConfig", "PromoteConfig",
    "RegistryConfig", "RunConfig", "StrategyConfig",
    "TrainConfig", "TrainerConfig", "check_target", "complete_target_sections", "compose_config", "compose_unchecked", "explain_hydra_error", "group_options",
    "import_target", "normalize_overrides", "check_drift_config", "check_pipeline_config", "check_promote_config",
    "check_quality_config", "check_registry_config", "quality_of", "schema_keys", "signature_params", "validate", "validate_launcher",
]
