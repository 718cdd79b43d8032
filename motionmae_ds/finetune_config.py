"""Typed finetuning / linear-probe config: dataclass defaults <- YAML file <- ``--set key=value`` overrides.

Built like ``motionmae_ds.config`` (same loader, same error style, same batch rules: the YAML owns the batch,
the DeepSpeed JSON only engine settings); only the sections differ. ``schedule.batch_size`` counts videos per
device; with ``data.num_repeats`` R each video gives R clips, so a micro-batch holds batch_size x R clips
(the lr scaling rule uses videos, as the recipes of the paper do).

``finetune.init`` names the weights to start from: a pretraining run directory, a DeepSpeed checkpoint
directory (any ZeRO world size), or a ``.pth`` file (ours or VideoMAE's); ``none`` trains from scratch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from motionmae_ds.config import (REPO_ROOT, ConfigError, _apply, check_clip_and_schedule, check_ranges,
                                 load_sections, sections_to_dict)

DEFAULT_FINETUNE_CONFIG = REPO_ROOT / "configs" / "finetune_demo.yaml"


@dataclass
class FtModelConfig:
    name: str = "vit_base"
    num_classes: int = 174
    num_frames: int = 16
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    pos_embed: str = "sincos_1d"
    drop_path_rate: float = 0.1
    head_dropout: float = 0.0
    init_scale: float = 0.001
    grad_checkpointing: bool = False


@dataclass
class FtDataConfig:
    # synthetic: the embedded labelled set (motion-only classes) instead of the list files
    synthetic: bool = False
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    root: str = ""
    list_format: str = "auto"
    # frame-folder entries: image names inside a folder (one integer field) and the first frame's number
    frame_template: str = "img_{:05d}.jpg"
    frame_start: int = 1
    sampling_rate: int = 4
    flip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    # eval: shorter side resized to this, then crops of model.img_size (None = img_size * 256 / 224)
    short_side_size: Optional[int] = None
    # timm-style RandAugment spec; empty = off
    rand_aug: str = "rand-m9-mstd0.5-inc1"
    random_erase: float = 0.25
    # repeated sampling: clips drawn per decoded video (paper: 2 for SSv2/K400)
    num_repeats: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    decode_backend: str = "auto"
    num_workers: int = 2
    loader_timeout_s: float = 300.0
    max_bad_fraction: float = 0.05
    cache_dir: str = ""
    synthetic_videos: Optional[int] = None
    synthetic_frames: Optional[int] = None
    synthetic_size: Optional[int] = None


@dataclass
class MixupConfig:
    # Beta(alpha, alpha) for mixup and cutmix; 0 turns that one off
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    # probability that a batch is mixed at all, and that a mixed batch uses cutmix rather than mixup
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class FtOptimConfig:
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 0.75


@dataclass
class FtScheduleConfig:
    epochs: int = 30
    warmup_epochs: int = 5
    batch_size: int = 8
    accum_steps: Optional[int] = None
    total_batch_size: Optional[int] = None


@dataclass
class FinetuneSection:
    # where the encoder weights come from; "none" = random init
    init: str = "none"
    # keep a pretrained head when its shape fits (e.g. evaluating/continuing a finetuned checkpoint)
    init_keep_head: bool = False
    # linear probe: frozen encoder, normalised pooled features, only a linear head trained
    linear_probe: bool = False
    probe_norm: str = "batchnorm"
    model_ema: bool = False
    model_ema_decay: float = 0.9999


@dataclass
class EvalConfig:
    # one-view validation every N epochs (0 = never); the multi-view test pass runs once at the end
    val_every_epochs: int = 1
    test_clips: int = 2
    test_crops: int = 3
    # videos per forward in evaluation; each test video contributes clips x crops views
    batch_size: int = 4
    # write every class probability into predictions.jsonl (top-5 is always there)
    save_scores: bool = True


@dataclass
class FtRunConfig:
    seed: int = 0
    output_dir: str = ""
    log_every: int = 10
    save_every_epochs: int = 1
    keep_last: int = 1


@dataclass
class FinetuneConfig:
    model: FtModelConfig = field(default_factory=FtModelConfig)
    data: FtDataConfig = field(default_factory=FtDataConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    optim: FtOptimConfig = field(default_factory=FtOptimConfig)
    schedule: FtScheduleConfig = field(default_factory=FtScheduleConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: FtRunConfig = field(default_factory=FtRunConfig)
    source: str = field(default="<defaults>", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return sections_to_dict(self)

    @property
    def short_side(self) -> int:
        return self.data.short_side_size or round(self.model.img_size * 256 / 224)

    @property
    def mixup_active(self) -> bool:
        m = self.mixup
        return m.prob > 0 and (m.mixup_alpha > 0 or m.cutmix_alpha > 0)


def load_finetune_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None
                         ) -> FinetuneConfig:
    """Load ``path`` (default: configs/finetune_demo.yaml), apply ``--set`` overrides, validate."""
    cfg = load_sections(FinetuneConfig, Path(path) if path is not None else DEFAULT_FINETUNE_CONFIG, overrides)
    validate_finetune(cfg)
    return cfg


def finetune_config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> FinetuneConfig:
    """Rebuild from ``to_dict()`` output (a finetune run's config.yaml)."""
    cfg = FinetuneConfig(source=origin)
    _apply(cfg, data, origin, {})  # type: ignore[arg-type]
    validate_finetune(cfg)
    return cfg


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Value checks that do not touch the file system (recipes must load on any machine)."""
    src = cfg.source
    if cfg.model.pos_embed not in ("sincos_1d", "sincos_3d"):
        raise ConfigError(f"{src}: model.pos_embed={cfg.model.pos_embed!r} is not one of sincos_1d, sincos_3d")
    if cfg.finetune.probe_norm not in ("batchnorm", "layernorm"):
        raise ConfigError(f"{src}: finetune.probe_norm={cfg.finetune.probe_norm!r} is not one of batchnorm, layernorm")
    positive = {
        "model.num_classes": cfg.model.num_classes, "model.num_frames": cfg.model.num_frames,
        "model.img_size": cfg.model.img_size, "model.patch_size": cfg.model.patch_size,
        "model.tubelet_size": cfg.model.tubelet_size, "data.sampling_rate": cfg.data.sampling_rate,
        "data.num_repeats": cfg.data.num_repeats, "schedule.epochs": cfg.schedule.epochs,
        "schedule.batch_size": cfg.schedule.batch_size, "run.log_every": cfg.run.log_every,
        "eval.test_clips": cfg.eval.test_clips, "eval.test_crops": cfg.eval.test_crops,
        "eval.batch_size": cfg.eval.batch_size,
    }
    nonneg = {
        "schedule.warmup_epochs": cfg.schedule.warmup_epochs, "data.num_workers": cfg.data.num_workers,
        "run.save_every_epochs": cfg.run.save_every_epochs, "run.keep_last": cfg.run.keep_last,
        "optim.base_lr": cfg.optim.base_lr, "optim.min_lr": cfg.optim.min_lr,
        "optim.weight_decay": cfg.optim.weight_decay, "mixup.mixup_alpha": cfg.mixup.mixup_alpha,
        "mixup.cutmix_alpha": cfg.mixup.cutmix_alpha, "eval.val_every_epochs": cfg.eval.val_every_epochs,
    }
    check_ranges(src, positive, nonneg)
    fractions = {
        "mixup.prob": cfg.mixup.prob, "mixup.switch_prob": cfg.mixup.switch_prob,
        "mixup.label_smoothing": cfg.mixup.label_smoothing, "data.random_erase": cfg.data.random_erase,
        "data.max_bad_fraction": cfg.data.max_bad_fraction, "model.drop_path_rate": cfg.model.drop_path_rate,
        "finetune.model_ema_decay": cfg.finetune.model_ema_decay,
    }
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{src}: {key}={value} must be in [0, 1]")
    if not 0.0 < cfg.optim.layer_decay <= 1.0:
        raise ConfigError(f"{src}: optim.layer_decay={cfg.optim.layer_decay} must be in (0, 1]")
    check_clip_and_schedule(cfg)
    if cfg.short_side < cfg.model.img_size:
        raise ConfigError(f"{src}: data.short_side_size={cfg.data.short_side_size} is smaller than "
                          f"model.img_size={cfg.model.img_size}")
    if not cfg.data.synthetic and not cfg.data.train_list:
        raise ConfigError(f"{src}: data.train_list is empty (set it, or data.synthetic: true)")
    if not cfg.finetune.init:
        raise ConfigError(f"{src}: finetune.init is empty (a checkpoint path, or none for random init)")
    if cfg.finetune.linear_probe and cfg.finetune.init.lower() == "none":
        raise ConfigError(f"{src}: finetune.linear_probe=true needs pretrained weights (finetune.init is none)")


def check_finetune_paths(cfg: FinetuneConfig) -> None:
    """File-system checks, done when a run starts (not when a recipe is merely loaded)."""
    if not cfg.data.synthetic:
        for key in ("train_list", "val_list", "test_list"):
            value = getattr(cfg.data, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"{cfg.source}: data.{key}={value}: file not found")
        if cfg.data.root and not Path(cfg.data.root).is_dir():
            raise ConfigError(f"{cfg.source}: data.root={cfg.data.root}: directory not found")
    init = cfg.finetune.init
    if init.lower() != "none" and not Path(init).exists():
        hint = ""
        if "pretrain_demo" in init:
            hint = ("; run the pretraining demo first (deepspeed launch/pretrain.py --deepspeed_config "
                    "ds_configs/zero2.json) or pass --set finetune.init=none to train from scratch")
        raise ConfigError(f"{cfg.source}: finetune.init={init}: not found{hint}")
