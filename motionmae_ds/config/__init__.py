"""Typed job configs: section dataclasses <- YAML file <- ``--set section.key=value`` overrides.

``sections.py`` declares the fields pretraining and finetuning share, once; ``pretrain.py`` and
``finetune.py`` compose their job configs from them; ``loader.py`` reads YAML for both; ``checks.py`` holds
the shared value checks and the batch layout; ``paths.py`` the file-system checks done at run start.
Enum choices come from the model/data constants, so a new mask kind or decoder backend needs no edit here.
"""
from motionmae_ds.config.checks import batch_layout
from motionmae_ds.config.finetune import (
                                          DEFAULT_FINETUNE_CONFIG,
                                          FinetuneConfig,
                                          load_finetune_config,
                                          validate_finetune,
)
from motionmae_ds.config.loader import REPO_ROOT, ConfigError, load_sections, parse_overrides, sections_to_dict
from motionmae_ds.config.paths import check_paths
from motionmae_ds.config.pretrain import (
                                          DEFAULT_PRETRAIN_CONFIG,
                                          PretrainConfig,
                                          config_from_dict,
                                          load_pretrain_config,
                                          validate_pretrain,
)

__all__ = [
    "DEFAULT_FINETUNE_CONFIG", "DEFAULT_PRETRAIN_CONFIG", "REPO_ROOT", "ConfigError", "FinetuneConfig",
    "PretrainConfig", "batch_layout", "check_paths", "config_from_dict", "load_finetune_config",
    "load_pretrain_config", "load_sections", "parse_overrides", "sections_to_dict", "validate_finetune",
    "validate_pretrain",
]
