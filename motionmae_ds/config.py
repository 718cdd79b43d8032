"""Typed experiment config: dataclass defaults <- YAML file <- ``--set key=value`` overrides.

Every setting of an experiment (model, targets, masking, data, optimiser, schedule, run) lives here; the
DeepSpeed JSON holds engine settings only (ZeRO, bf16, clipping). The batch has one source of truth: the
YAML's ``schedule.batch_size`` (per-device micro batch) together with either ``schedule.accum_steps`` or
``schedule.total_batch_size`` (from which accumulation is derived for the actual world size); see
``motionmae_ds.engine.ds_config`` for how the JSON is filled in and checked against it.

Bad input raises ``ConfigError`` with one line naming the file, the key and (when known) the line.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "pretrain_demo.yaml"


class ConfigError(ValueError):
    """A bad experiment config; the message is one line naming the key (and file/line when known)."""


@dataclass
class ModelConfig:
    name: str = "vit_base"
    num_frames: int = 16
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    decoder_mode: str = "divide"
    pos_embed: str = "sincos_1d"
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    # continued pretraining: initialise the encoder from a run dir / checkpoint / VideoMAE .pth / HF VideoMAE
    # directory (decoders start fresh); empty = random init. Ignored when the run resumes from its own checkpoint.
    init_encoder: str = ""


@dataclass
class TargetConfig:
    target: str = "frame_motion"
    norm_target: bool = False
    motion_granularity: int = 1
    motion_signed: bool = False
    loss_type: str = "mse"
    loss_weight_frame: float = 1.0
    loss_weight_motion: float = 1.0


@dataclass
class MaskingConfig:
    kind: str = "random"
    ratio: float = 0.9


@dataclass
class DataConfig:
    # synthetic: generate (once, cached) the embedded default videos instead of reading list_file
    synthetic: bool = False
    list_file: str = ""
    root: str = ""
    list_format: str = "auto"
    # frame-folder entries: image names inside a folder (one integer field) and the first frame's number
    frame_template: str = "img_{:05d}.jpg"
    frame_start: int = 1
    # clip used for the reconstruction figures; empty = the first entry of list_file
    vis_video: str = ""
    sampling_rate: int = 4
    flip: bool = True
    scale: tuple[float, float] = (0.5, 1.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    decode_backend: str = "auto"
    num_workers: int = 2
    loader_timeout_s: float = 300.0
    # stop the run when more than this fraction of an epoch's samples could not be decoded
    max_bad_fraction: float = 0.05
    # where synthetic videos are cached; empty = $MOTIONMAE_CACHE or ~/.cache/motionmae_ds
    cache_dir: str = ""
    # size of the synthetic set (None = the generator's defaults); tests use tiny ones
    synthetic_videos: Optional[int] = None
    synthetic_frames: Optional[int] = None
    synthetic_size: Optional[int] = None


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    # cosine-anneal weight decay to this value; None keeps it constant
    weight_decay_end: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    epochs: int = 800
    warmup_epochs: int = 40
    batch_size: int = 32
    # give at most one of these two; neither means accumulation 1
    accum_steps: Optional[int] = None
    total_batch_size: Optional[int] = None


@dataclass
class RunConfig:
    seed: int = 0
    # empty = runs/<config file stem>
    output_dir: str = ""
    log_every: int = 10
    save_every_epochs: int = 1
    # also checkpoint mid-epoch every N optimizer steps (0 = off)
    save_every_steps: int = 0
    keep_last: int = 2
    visualize: bool = True


@dataclass
class DebugConfig:
    # Testing aid: replace the loss of this global micro-step by NaN to exercise the non-finite stop.
    inject_nonfinite_at_step: Optional[int] = None


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    # where it came from, for messages and the default output dir (not a YAML key)
    source: str = field(default="<defaults>", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return sections_to_dict(self)


def sections_to_dict(cfg: Any) -> dict[str, Any]:
    """A sectioned config dataclass as plain YAML-able data (tuples become lists; ``source`` is left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "source":
            continue
        section = dataclasses.asdict(getattr(cfg, f.name))
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "1e-3" (no dot) as a string
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp} at {where}")


def _key_lines(text: str) -> dict[str, int]:
    """Map 'section.key' -> 1-based line number in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = f"{prefix}{key_node.value}"
                lines[name] = key_node.start_mark.line + 1
                walk(value_node, name + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _apply(cfg: ExperimentConfig, data: dict[str, Any], origin: str, lines: dict[str, int]) -> None:
    def where(key: str) -> str:
        line = lines.get(key)
        return f"{origin}:{line}: {key}" if line else f"{origin}: {key}"

    sections = {f.name: f for f in dataclasses.fields(cfg) if f.name != "source"}
    for sec_name, sec_value in data.items():
        if sec_name not in sections:
            raise ConfigError(f"{where(str(sec_name))}: unknown section (known: {', '.join(sections)})")
        if sec_value is None:
            continue
        if not isinstance(sec_value, dict):
            raise ConfigError(f"{where(sec_name)}: expected a mapping of keys")
        section = getattr(cfg, sec_name)
        hints = typing.get_type_hints(type(section))
        for key, value in sec_value.items():
            full = f"{sec_name}.{key}"
            if key not in hints:
                raise ConfigError(f"{where(full)}: unknown key (known: {', '.join(hints)})")
            setattr(section, key, _convert(value, hints[key], where(full)))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=1e-3", "data.flip=false"]`` -> nested dict, values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Load ``path`` (default: configs/pretrain_demo.yaml), apply ``--set`` overrides, validate."""
    cfg = load_sections(ExperimentConfig, Path(path) if path is not None else DEFAULT_CONFIG, overrides)
    validate(cfg)
    return cfg


def load_sections(config_cls: type, path: Path, overrides: Optional[list[str]] = None) -> Any:
    """``config_cls`` (a dataclass of section dataclasses with a ``source`` field) from the YAML file at
    ``path`` and ``--set`` overrides, types checked; value checks are the caller's."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    cfg = config_cls(source=str(path))
    _apply(cfg, data, str(path), _key_lines(text))
    if overrides:
        _apply(cfg, parse_overrides(overrides), "--set", {})
    return cfg


def config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> ExperimentConfig:
    """Rebuild a config from ``to_dict()`` output (e.g. a run's config.yaml or checkpoint client state)."""
    cfg = ExperimentConfig(source=origin)
    _apply(cfg, data, origin, {})
    validate(cfg)
    return cfg


_CHOICES = {
    ("model", "decoder_mode"): ("divide", "shared"),
    ("model", "pos_embed"): ("sincos_1d", "sincos_3d"),
    ("targets", "target"): ("frame", "motion", "frame_motion"),
    ("targets", "loss_type"): ("mse", "l1", "smooth_l1"),
    ("masking", "kind"): ("random", "tube", "frame"),
}


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that do not touch the file system (recipes must load on any machine)."""
    src = cfg.source
    for (sec, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in allowed:
            raise ConfigError(f"{src}: {sec}.{key}={value!r} is not one of {', '.join(allowed)}")
    positive = {
        "model.num_frames": cfg.model.num_frames, "model.img_size": cfg.model.img_size,
        "model.patch_size": cfg.model.patch_size, "model.tubelet_size": cfg.model.tubelet_size,
        "data.sampling_rate": cfg.data.sampling_rate, "schedule.epochs": cfg.schedule.epochs,
        "schedule.batch_size": cfg.schedule.batch_size, "run.log_every": cfg.run.log_every,
        "targets.motion_granularity": cfg.targets.motion_granularity,
    }
    nonneg = {
        "schedule.warmup_epochs": cfg.schedule.warmup_epochs, "data.num_workers": cfg.data.num_workers,
        "run.save_every_epochs": cfg.run.save_every_epochs, "run.save_every_steps": cfg.run.save_every_steps,
        "optim.base_lr": cfg.optim.base_lr, "optim.min_lr": cfg.optim.min_lr,
        "optim.weight_decay": cfg.optim.weight_decay, "run.keep_last": cfg.run.keep_last,
    }
    check_ranges(src, positive, nonneg)
    if not 0.0 < cfg.masking.ratio < 1.0:
        raise ConfigError(f"{src}: masking.ratio={cfg.masking.ratio} must be in (0, 1)")
    if not 0.0 <= cfg.data.max_bad_fraction <= 1.0:
        raise ConfigError(f"{src}: data.max_bad_fraction={cfg.data.max_bad_fraction} must be in [0, 1]")
    check_clip_and_schedule(cfg)
    if not cfg.data.synthetic and not cfg.data.list_file:
        raise ConfigError(f"{src}: data.list_file is empty (set it, or data.synthetic: true)")


def check_ranges(src: str, positive: dict[str, float], nonneg: dict[str, float]) -> None:
    """One line naming the first value of ``positive`` that is <= 0 or of ``nonneg`` that is < 0."""
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{src}: {key}={value} must be positive")
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{src}: {key}={value} must be >= 0")


def check_clip_and_schedule(cfg: Any) -> None:
    """Checks the pretraining and finetuning configs share: tubelet/patch geometry, crop scale, warmup, and
    the two ways of giving the batch."""
    src, model, sched = cfg.source, cfg.model, cfg.schedule
    if model.num_frames % model.tubelet_size:
        raise ConfigError(f"{src}: model.tubelet_size={model.tubelet_size} does not divide "
                          f"model.num_frames={model.num_frames}")
    if model.img_size % model.patch_size:
        raise ConfigError(f"{src}: model.patch_size={model.patch_size} does not divide "
                          f"model.img_size={model.img_size}")
    template = cfg.data.frame_template
    try:
        named = template.format(cfg.data.frame_start)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"{src}: data.frame_template={template!r} must hold one integer field like "
                          f"img_{{:05d}}.jpg ({exc})") from None
    if named == template or "/" in named:
        raise ConfigError(f"{src}: data.frame_template={template!r} must hold one integer field like "
                          f"img_{{:05d}}.jpg and name a file inside the folder")
    if cfg.data.frame_start < 0:
        raise ConfigError(f"{src}: data.frame_start={cfg.data.frame_start} must be >= 0")
    lo, hi = cfg.data.scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"{src}: data.scale={list(cfg.data.scale)} must satisfy 0 < min <= max <= 1")
    if sched.warmup_epochs > sched.epochs:
        raise ConfigError(f"{src}: schedule.warmup_epochs={sched.warmup_epochs} exceeds "
                          f"schedule.epochs={sched.epochs}")
    if sched.accum_steps is not None and sched.total_batch_size is not None:
        raise ConfigError(f"{src}: give schedule.accum_steps or schedule.total_batch_size, not both")
    for key in ("accum_steps", "total_batch_size"):
        value = getattr(sched, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{src}: schedule.{key}={value} must be positive")


def check_paths(cfg: ExperimentConfig) -> None:
    """File-system checks, done when a run starts (not when a recipe is merely loaded)."""
    if cfg.data.synthetic:
        return
    if not Path(cfg.data.list_file).is_file():
        raise ConfigError(f"{cfg.source}: data.list_file={cfg.data.list_file}: file not found")
    if cfg.data.root and not Path(cfg.data.root).is_dir():
        raise ConfigError(f"{cfg.source}: data.root={cfg.data.root}: directory not found")
    if cfg.model.init_encoder and not Path(cfg.model.init_encoder).exists():
        raise ConfigError(f"{cfg.source}: model.init_encoder={cfg.model.init_encoder}: not found")
    if cfg.data.vis_video and not Path(cfg.data.vis_video).exists():
        raise ConfigError(f"{cfg.source}: data.vis_video={cfg.data.vis_video}: file not found")


def batch_layout(cfg: ExperimentConfig, world_size: int) -> tuple[int, int, int]:
    """(micro batch per device, accumulation steps, total batch) for this world size."""
    micro = cfg.schedule.batch_size
    if cfg.schedule.total_batch_size is not None:
        total = cfg.schedule.total_batch_size
        if total % (micro * world_size):
            raise ConfigError(
                f"{cfg.source}: schedule.total_batch_size={total} is not a multiple of "
                f"schedule.batch_size={micro} x world size {world_size}")
        return micro, total // (micro * world_size), total
    accum = cfg.schedule.accum_steps or 1
    return micro, accum, micro * accum * world_size
