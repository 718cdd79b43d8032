"""The pretraining job config: model, targets, masking, data, optimiser, schedule, run.

Every setting of a pretraining experiment lives here; the DeepSpeed JSON holds engine settings only (ZeRO,
bf16, clipping). The batch has one source of truth: the YAML's ``schedule.batch_size`` (per-device micro
batch) with either ``schedule.accum_steps`` or ``schedule.total_batch_size`` (see ``checks.batch_layout``
and ``motionmae_ds.runtime.ds_config`` for how the JSON is filled in and checked against it). With
``data.num_repeats`` R each video of a micro-batch gives R clips: ``schedule.batch_size`` counts videos per
device, ``schedule.total_batch_size`` and the lr scaling count clips (batch_size x R x accum x world size).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from motionmae_ds.config.checks import check_choices, check_ranges, check_shared
from motionmae_ds.config.loader import REPO_ROOT, ConfigError, SectionedConfig, apply_sections, load_sections
from motionmae_ds.config.sections import (
    DataSection,
    DataSource,
    ModelSection,
    OptimSection,
    RunSection,
    ScheduleSection,
)
from motionmae_ds.models.masking import DECODER_HEADS, DECODER_MASK_KINDS, DECODER_RATIOS, MASK_KINDS
from motionmae_ds.models.motionmae import DECODER_MODES, LOSSES, TARGETS

DEFAULT_PRETRAIN_CONFIG = REPO_ROOT / "configs" / "pretrain_demo.yaml"


@dataclass
class PretrainModelSection(ModelSection):
    # decoder sizes; None = the registry's defaults for model.name
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    decoder_mode: str = "divide"
    # continued pretraining: initialise the encoder from a run dir / checkpoint / VideoMAE .pth / HF VideoMAE
    # directory (decoders start fresh); empty = random init. Ignored when the run resumes from its own checkpoint.
    init_encoder: str = ""


@dataclass
class TargetSection:
    target: str = "frame_motion"
    norm_target: bool = False
    motion_granularity: int = 1
    motion_signed: bool = False
    loss_type: str = "mse"
    loss_weight_frame: float = 1.0
    loss_weight_motion: float = 1.0


@dataclass
class MaskingSection:
    kind: str = "random"
    ratio: float = 0.9
    # decoder masking (VideoMAE V2's running cell; not in the paper): the share of masked tokens each decoder
    # skips, 0 = every masked token is decoded (the paper), or 0.25 / 0.5 / 0.75
    decoder_ratio: float = 0.0
    decoder_kind: str = "running_cell"
    # shared: both heads decode the same tokens; complementary: the time head takes the next places of the
    # cell, so at 0.5 each masked token is supervised by one head per step
    decoder_heads: str = "shared"


@dataclass
class PretrainDataSection(DataSection):
    list_file: str = ""
    # repeated temporal sampling (mae_st's repeat_aug; not in the paper): each opened video gives this many
    # clips with their own random starts, crops, flips and masks, its frames decoded once. schedule.batch_size
    # counts videos per device (a micro-batch holds batch_size x num_repeats clips); total_batch_size and the
    # lr scaling count clips
    num_repeats: int = 1
    # clip used for the reconstruction figures; empty = the first entry of list_file
    vis_video: str = ""
    # a mixture of datasets (data/mixture.py): entries {name, list_file | shards, root, weight, sampling_rate};
    # every epoch draws from each in proportion to its weight. Empty = the one source data.list_file (or
    # data.shards) with data.root and data.sampling_rate, which is what one entry here also means
    sources: list[DataSource] = field(default_factory=list)


@dataclass
class PretrainRunSection(RunSection):
    # a reconstruction figure (vis/<tag>.png) at every checkpoint
    visualize: bool = True


@dataclass
class PretrainConfig(SectionedConfig):
    model: PretrainModelSection = field(default_factory=PretrainModelSection)
    targets: TargetSection = field(default_factory=TargetSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    data: PretrainDataSection = field(default_factory=PretrainDataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: PretrainRunSection = field(default_factory=PretrainRunSection)
    # where it came from, for messages and the default output dir (not a YAML key)
    source: str = field(default="<defaults>", repr=False, compare=False)

    @property
    def clips_per_video(self) -> int:
        """Clips each loaded video adds to a batch: what total_batch_size and the lr scaling count."""
        return self.data.num_repeats


def load_pretrain_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None
                         ) -> PretrainConfig:
    """Load ``path`` (default: configs/pretrain_demo.yaml), apply ``--set`` overrides, validate."""
    cfg = load_sections(PretrainConfig, Path(path) if path is not None else DEFAULT_PRETRAIN_CONFIG, overrides)
    validate_pretrain(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> PretrainConfig:
    """Rebuild a pretraining config from ``to_dict()`` output (a run's config.yaml or checkpoint client
    state), so a checkpoint rebuilds its model without the recipe file."""
    cfg = PretrainConfig(source=origin)
    apply_sections(cfg, data, origin, {})
    validate_pretrain(cfg)
    return cfg


def validate_pretrain(cfg: PretrainConfig) -> None:
    """Value checks that do not touch the file system (recipes must load on any machine)."""
    src = cfg.source
    check_choices(src, {
        "model.decoder_mode": (cfg.model.decoder_mode, DECODER_MODES),
        "targets.target": (cfg.targets.target, TARGETS),
        "targets.loss_type": (cfg.targets.loss_type, tuple(LOSSES)),
        "masking.kind": (cfg.masking.kind, MASK_KINDS),
        "masking.decoder_kind": (cfg.masking.decoder_kind, DECODER_MASK_KINDS),
        "masking.decoder_heads": (cfg.masking.decoder_heads, DECODER_HEADS),
    })
    check_ranges(src, positive={"targets.motion_granularity": cfg.targets.motion_granularity,
                                "data.num_repeats": cfg.data.num_repeats}, nonneg={})
    if not 0.0 < cfg.masking.ratio < 1.0:
        raise ConfigError(f"{src}: masking.ratio={cfg.masking.ratio} must be in (0, 1)")
    check_decoder_masking(cfg)
    check_shared(cfg)
    if cfg.data.sources:
        check_sources(cfg)
    elif not cfg.data.synthetic and not cfg.data.list_file and not cfg.data.shards:
        raise ConfigError(f"{src}: data.list_file is empty (set it, or data.synthetic: true)")


def check_sources(cfg: PretrainConfig) -> None:
    """``data.sources``: each entry one list file or shard set, a weight > 0, a stride >= 1, a unique name; and no
    shorthand (data.list_file, data.shards, data.synthetic) beside them."""
    d, src = cfg.data, cfg.source
    for key, value in (("list_file", d.list_file), ("shards", d.shards), ("synthetic", d.synthetic)):
        if value:
            raise ConfigError(f"{src}: data.{key}={value} and data.sources are both set: data.{key} is the shorthand "
                              f"of one source; give one or the other")
    names = set()
    for i, s in enumerate(d.sources):
        where = f"{src}: data.sources[{i}]"
        if bool(s.list_file) == bool(s.shards):
            raise ConfigError(f"{where}: give list_file or shards (exactly one), got list_file={s.list_file!r} "
                              f"shards={s.shards!r}")
        if not (math.isfinite(s.weight) and s.weight > 0):
            raise ConfigError(f"{where}.weight={s.weight} must be a number > 0")
        if s.sampling_rate is not None and s.sampling_rate < 1:
            raise ConfigError(f"{where}.sampling_rate={s.sampling_rate} must be >= 1")
        name = source_name(s, i)
        if name in names:
            raise ConfigError(f"{where}.name={name!r}: another entry has that name")
        names.add(name)


def source_name(source: DataSource, index: int) -> str:
    return source.name or f"source{index}"


def pretrain_sources(cfg: PretrainConfig) -> list[DataSource]:
    """The run's sources with every default filled in (name, root, sampling_rate): ``data.sources``, or the one source
    the shorthand keys (data.list_file / data.shards, data.root, data.sampling_rate) describe."""
    d = cfg.data
    if not d.sources:
        return [DataSource(name=source_name(DataSource(), 0), list_file=d.list_file, shards=d.shards, root=d.root,
                           weight=1.0, sampling_rate=d.sampling_rate)]
    return [dataclasses.replace(s, name=source_name(s, i), root=s.root or d.root,
                                sampling_rate=s.sampling_rate or d.sampling_rate) for i, s in enumerate(d.sources)]


def check_decoder_masking(cfg: PretrainConfig) -> None:
    m, src = cfg.masking, cfg.source
    ratio = m.decoder_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or (
            ratio != 0 and not any(ratio == r for r in DECODER_RATIOS)):
        raise ConfigError(f"{src}: masking.decoder_ratio={ratio!r} must be 0 (off) or one of "
                          f"{', '.join(str(r) for r in DECODER_RATIOS)}")
    if ratio == 0:
        return
    side = cfg.model.img_size // cfg.model.patch_size
    if side % 2:
        raise ConfigError(f"{src}: masking.decoder_ratio={ratio} tiles the token grid by 2x2 cells, but "
                          f"model.img_size / model.patch_size = {cfg.model.img_size} / {cfg.model.patch_size} "
                          f"= {side} tokens per side is odd")
    if m.decoder_heads == "complementary":
        if cfg.model.decoder_mode == "shared":
            raise ConfigError(f"{src}: masking.decoder_heads=complementary needs model.decoder_mode=divide "
                              f"(one shared decoder decodes one token set)")
        if cfg.targets.target != "frame_motion":
            raise ConfigError(f"{src}: masking.decoder_heads=complementary splits the masked tokens between two "
                              f"heads; targets.target={cfg.targets.target} has one")
