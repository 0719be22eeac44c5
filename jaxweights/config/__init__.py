"""Zoo configuration: defaults and validation (schema), the one override applier, the study presets."""

from jaxweights.config.overrides import apply_overrides, dotted_items, last_overrides
from jaxweights.config.presets import study_config
from jaxweights.config.schema import (
    DYNAMIC,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    closest,
    config_arg,
    default_config,
    hyperparameter_grid,
    model_kwargs,
    validate,
)

__all__ = [
    "DYNAMIC",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "ConfigError",
    "closest",
    "config_arg",
    "default_config",
    "hyperparameter_grid",
    "model_kwargs",
    "validate",
    "apply_overrides",
    "dotted_items",
    "last_overrides",
    "study_config",
]
