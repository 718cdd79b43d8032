"""File-system checks, done when a run starts (not when a recipe is merely loaded, so recipes validate on
any machine). Synthetic data skips only the list-file/root checks: the weights to start from and the clip
for the figures are read either way, and a typo there must fail before any process group exists."""
from __future__ import annotations

from pathlib import Path

from motionmae_ds.config.finetune import FinetuneConfig
from motionmae_ds.config.loader import ConfigError
from motionmae_ds.config.pretrain import PretrainConfig
from motionmae_ds.data.shards import ShardError, shard_urls


def check_paths(cfg: PretrainConfig | FinetuneConfig) -> None:
    """One ``ConfigError`` line naming the first configured path that does not exist."""
    if isinstance(cfg, PretrainConfig):
        _check_pretrain(cfg)
    elif isinstance(cfg, FinetuneConfig):
        _check_finetune(cfg)
    else:
        raise TypeError(f"check_paths: expected a PretrainConfig or FinetuneConfig, got {type(cfg).__name__}")


def _check_data_files(cfg: PretrainConfig | FinetuneConfig, list_keys: tuple[str, ...]) -> None:
    if cfg.data.synthetic:
        return
    for key in list_keys:
        value = getattr(cfg.data, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{cfg.source}: data.{key}={value}: file not found")
    try:
        urls = shard_urls(cfg.data.shards) if cfg.data.shards else []
    except ShardError as exc:
        raise ConfigError(f"{cfg.source}: data.shards: {exc}") from None
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise ConfigError(f"{cfg.source}: data.shards={cfg.data.shards}: {missing[0]}: file not found")
    if cfg.data.root and not Path(cfg.data.root).is_dir():
        raise ConfigError(f"{cfg.source}: data.root={cfg.data.root}: directory not found")


def _check_sources(cfg: PretrainConfig) -> None:
    for i, source in enumerate(cfg.data.sources):
        key = f"{cfg.source}: data.sources[{i}]"
        if source.list_file and not Path(source.list_file).is_file():
            raise ConfigError(f"{key}.list_file={source.list_file}: file not found")
        try:
            urls = shard_urls(source.shards) if source.shards else []
        except ShardError as exc:
            raise ConfigError(f"{key}.shards: {exc}") from None
        missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise ConfigError(f"{key}.shards={source.shards}: {missing[0]}: file not found")
        if source.root and not Path(source.root).is_dir():
            raise ConfigError(f"{key}.root={source.root}: directory not found")


def _check_pretrain(cfg: PretrainConfig) -> None:
    _check_data_files(cfg, ("list_file",))
    _check_sources(cfg)
    if cfg.model.init_encoder and not Path(cfg.model.init_encoder).exists():
        raise ConfigError(f"{cfg.source}: model.init_encoder={cfg.model.init_encoder}: not found")
    if cfg.data.vis_video and not Path(cfg.data.vis_video).exists():
        raise ConfigError(f"{cfg.source}: data.vis_video={cfg.data.vis_video}: file not found")


def _check_finetune(cfg: FinetuneConfig) -> None:
    _check_data_files(cfg, ("train_list", "val_list", "test_list"))
    init = cfg.finetune.init
    if init.lower() != "none" and not Path(init).exists():
        hint = ""
        if "pretrain_demo" in init:
            hint = ("; run the pretraining demo first (deepspeed launch/pretrain.py --deepspeed_config "
                    "ds_configs/zero2.json) or pass --set finetune.init=none to train from scratch")
        raise ConfigError(f"{cfg.source}: finetune.init={init}: not found{hint}")
