"""Experiment config -> model, mask generator, datasets. The only place that maps config keys to the
constructors of the models and data packages."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from motionmae_ds.config import ConfigError, ExperimentConfig


def model_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of ``build_pretrain_model`` for this config (also used for FLOP counting)."""
    m, t = cfg.model, cfg.targets
    return dict(
        name=m.name, num_frames=m.num_frames, img_size=m.img_size, patch_size=m.patch_size,
        tubelet_size=m.tubelet_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
        decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
        decoder_num_heads=m.decoder_num_heads, decoder_mode=m.decoder_mode, pos_embed=m.pos_embed,
        target=t.target, norm_target=t.norm_target, motion_granularity=t.motion_granularity,
        motion_signed=t.motion_signed, loss_type=t.loss_type, loss_weight_frame=t.loss_weight_frame,
        loss_weight_motion=t.loss_weight_motion, drop_path_rate=m.drop_path_rate,
        grad_checkpointing=m.grad_checkpointing, mean=cfg.data.mean, std=cfg.data.std,
    )


def classifier_kwargs(cfg: Any) -> dict[str, Any]:
    """Keyword arguments of ``build_classifier`` for a ``FinetuneConfig`` (also used for FLOP counting)."""
    m = cfg.model
    return dict(
        name=m.name, num_classes=m.num_classes, num_frames=m.num_frames, img_size=m.img_size,
        patch_size=m.patch_size, tubelet_size=m.tubelet_size, embed_dim=m.embed_dim, depth=m.depth,
        num_heads=m.num_heads, pos_embed=m.pos_embed, drop_path_rate=m.drop_path_rate,
        head_dropout=m.head_dropout, init_scale=m.init_scale, grad_checkpointing=m.grad_checkpointing)


def build_model(cfg: ExperimentConfig) -> nn.Module:
    from motionmae_ds.models import build_pretrain_model

    try:
        model = build_pretrain_model(**model_kwargs(cfg))
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: model: {exc}") from None
    if cfg.model.init_encoder:
        from motionmae_ds.tools.convert import init_encoder

        try:
            init_encoder(model, cfg.model.init_encoder)
        except Exception as exc:  # one line naming the source, whatever the format's loader raised
            raise ConfigError(f"{cfg.source}: model.init_encoder={cfg.model.init_encoder}: {exc}") from None
    return model


def build_masker(cfg: ExperimentConfig, grid: tuple[int, int, int]) -> Any:
    from motionmae_ds.models import build_mask_generator

    try:
        return build_mask_generator(kind=cfg.masking.kind, grid=grid, ratio=cfg.masking.ratio)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: masking: {exc}") from None


def cache_dir(cfg: ExperimentConfig) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    return Path(os.environ.get("MOTIONMAE_CACHE", Path.home() / ".cache" / "motionmae_ds"))


def resolve_list_file(cfg: ExperimentConfig) -> str:
    """The training list: the configured one, or the embedded synthetic set (generated once, cached).

    Call on every rank: generation is idempotent, and rank 0 does it first while the others wait.
    """
    if not cfg.data.synthetic:
        return cfg.data.list_file
    from motionmae_ds.data.synthetic import ensure_synthetic_dataset
    from motionmae_ds.engine import distributed as dist_utils

    d = cfg.data
    sizes = dict(num_videos=d.synthetic_videos, num_frames=d.synthetic_frames, size=d.synthetic_size)
    custom = [f"{k}{v}" for k, v in sizes.items() if v is not None]
    # non-default sets get their own directory so a test's tiny set never replaces the demo's cache
    root = cache_dir(cfg) / ("synthetic_" + "_".join(custom) if custom else "synthetic")
    if dist_utils.is_main():
        list_file = ensure_synthetic_dataset(root, kind="pretrain", seed=0, **sizes)
    dist_utils.barrier()
    if not dist_utils.is_main():
        list_file = ensure_synthetic_dataset(root, kind="pretrain", seed=0, **sizes)
    return str(list_file)


def read_records(data: Any, list_file: str, where: str) -> list:
    """The entries of ``list_file`` read with a config's ``data`` section (format, root, frame-folder
    naming); a bad or empty list is a ConfigError whose message starts with ``where``."""
    from motionmae_ds.data.lists import ListFormatError, read_list

    try:
        records = read_list(list_file, fmt=data.list_format, root=data.root,
                            frame_template=data.frame_template, frame_start=data.frame_start)
    except (ListFormatError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not records:
        raise ConfigError(f"{where}: no videos listed")
    return records


def build_dataset(cfg: ExperimentConfig, list_file: str, mode: str = "pretrain") -> Any:
    from motionmae_ds.data.datasets import VideoClipDataset

    records = read_records(cfg.data, list_file, f"data.list_file={list_file}")
    d = cfg.data
    try:
        return VideoClipDataset(
            records, mode=mode, num_frames=cfg.model.num_frames, sampling_rate=d.sampling_rate,
            input_size=cfg.model.img_size, scale=d.scale, flip=d.flip, mean=d.mean, std=d.std,
            seed=cfg.run.seed, backend=d.decode_backend,
        )
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data: {exc}") from None
