"""Value checks every job config shares, and the batch layout both jobs derive from the YAML.

Nothing here touches the file system: a recipe must load and validate on any machine (see ``paths.py`` for
the checks done when a run starts). Each failure is one ``ConfigError`` line naming the key and the source.
"""
from __future__ import annotations

from typing import Any, Sequence

from motionmae_ds.config.loader import ConfigError
from motionmae_ds.data.decode import BACKENDS
from motionmae_ds.data.lists import FORMATS
from motionmae_ds.models.pos_embed import POS_EMBED_KINDS


def check_choices(src: str, choices: dict[str, tuple[Any, Sequence[str]]]) -> None:
    """``{"section.key": (value, allowed)}``: one line naming the first value that is not allowed."""
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{src}: {key}={value!r} is not one of {', '.join(allowed)}")


def check_ranges(src: str, positive: dict[str, float], nonneg: dict[str, float]) -> None:
    """One line naming the first value of ``positive`` that is <= 0 or of ``nonneg`` that is < 0."""
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{src}: {key}={value} must be positive")
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{src}: {key}={value} must be >= 0")


def check_fractions(src: str, fractions: dict[str, float]) -> None:
    """One line naming the first value outside [0, 1]."""
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{src}: {key}={value} must be in [0, 1]")


def check_shared(cfg: Any) -> None:
    """Checks of the fields declared in ``sections.py``, for either job config."""
    src, model, data, sched = cfg.source, cfg.model, cfg.data, cfg.schedule
    check_choices(src, {
        "model.pos_embed": (model.pos_embed, POS_EMBED_KINDS),
        "data.decode_backend": (data.decode_backend, BACKENDS),
        "data.list_format": (data.list_format, FORMATS),
    })
    check_ranges(src, positive={
        "model.num_frames": model.num_frames, "model.img_size": model.img_size,
        "model.patch_size": model.patch_size, "model.tubelet_size": model.tubelet_size,
        "data.sampling_rate": data.sampling_rate, "schedule.epochs": sched.epochs,
        "schedule.batch_size": sched.batch_size, "run.log_every": cfg.run.log_every,
    }, nonneg={
        "schedule.warmup_epochs": sched.warmup_epochs, "data.num_workers": data.num_workers,
        "run.save_every_epochs": cfg.run.save_every_epochs, "run.save_every_steps": cfg.run.save_every_steps,
        "run.keep_last": cfg.run.keep_last,
        "optim.base_lr": cfg.optim.base_lr, "optim.min_lr": cfg.optim.min_lr,
        "optim.weight_decay": cfg.optim.weight_decay,
    })
    check_fractions(src, {"data.max_bad_fraction": data.max_bad_fraction,
                          "model.drop_path_rate": model.drop_path_rate})
    if data.shards and (data.synthetic or data.shards.startswith("pipe:")):
        why = "and data.synthetic are both set" if data.synthetic else "is a pipe: URL (shards are read by byte range)"
        raise ConfigError(f"{src}: data.shards={data.shards!r} {why}")
    _check_clip(cfg)
    _check_batch_keys(cfg)


def _check_clip(cfg: Any) -> None:
    """Tubelet/patch geometry, frame-folder naming and crop scale."""
    src, model, data = cfg.source, cfg.model, cfg.data
    if model.num_frames % model.tubelet_size:
        raise ConfigError(f"{src}: model.tubelet_size={model.tubelet_size} does not divide "
                          f"model.num_frames={model.num_frames}")
    if model.img_size % model.patch_size:
        raise ConfigError(f"{src}: model.patch_size={model.patch_size} does not divide "
                          f"model.img_size={model.img_size}")
    template = data.frame_template
    try:
        named = template.format(data.frame_start)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"{src}: data.frame_template={template!r} must hold one integer field like "
                          f"img_{{:05d}}.jpg ({exc})") from None
    # a template without a field names the same file for every frame; a "/" would leave the folder
    if named == template or "/" in named:
        raise ConfigError(f"{src}: data.frame_template={template!r} must hold one integer field like "
                          f"img_{{:05d}}.jpg and name a file inside the folder")
    if data.frame_start < 0:
        raise ConfigError(f"{src}: data.frame_start={data.frame_start} must be >= 0")
    lo, hi = data.scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"{src}: data.scale={list(data.scale)} must satisfy 0 < min <= max <= 1")


def _check_batch_keys(cfg: Any) -> None:
    """Warmup within the run, and the two ways of giving the batch (the YAML is its one source of truth)."""
    src, sched = cfg.source, cfg.schedule
    if sched.warmup_epochs > sched.epochs:
        raise ConfigError(f"{src}: schedule.warmup_epochs={sched.warmup_epochs} exceeds "
                          f"schedule.epochs={sched.epochs}")
    if sched.accum_steps is not None and sched.total_batch_size is not None:
        raise ConfigError(f"{src}: give schedule.accum_steps or schedule.total_batch_size, not both")
    for key in ("accum_steps", "total_batch_size"):
        value = getattr(sched, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{src}: schedule.{key}={value} must be positive")


def batch_layout(cfg: Any, world_size: int) -> tuple[int, int, int]:
    """(micro batch per device, accumulation steps, total batch) for this world size, for either job config;
    ``total_batch_size`` fixes the total and accumulation makes up what the devices do not. The micro batch
    counts loaded videos; the total counts clips: ``clips_per_video`` of them per video (pretraining's
    ``data.num_repeats``; finetuning counts videos)."""
    micro = cfg.schedule.batch_size
    clips = getattr(cfg, "clips_per_video", 1)
    if cfg.schedule.total_batch_size is not None:
        total = cfg.schedule.total_batch_size
        if total % (micro * clips * world_size):
            repeats = f"data.num_repeats={clips} x " if clips > 1 else ""
            raise ConfigError(
                f"{cfg.source}: schedule.total_batch_size={total} is not a multiple of "
                f"schedule.batch_size={micro} x {repeats}world size {world_size}; "
                + _batch_remedy(total, micro, clips, world_size))
        return micro, total // (micro * clips * world_size), total
    accum = cfg.schedule.accum_steps or 1
    return micro, accum, micro * clips * accum * world_size


def _batch_remedy(total: int, micro: int, clips: int, world_size: int) -> str:
    """What to set when the total batch does not divide: the largest micro batch up to the configured one (the
    memory it was sized for) that divides it on this world size, else a world size that can hold it."""
    per_rank, spare = divmod(total, clips * world_size)
    if not spare and per_rank:
        fits = max(d for d in range(1, min(micro, per_rank) + 1) if per_rank % d == 0)
        return (f"with {world_size} ranks use --set schedule.batch_size={fits} "
                f"({per_rank // fits} accumulation step(s)), or change schedule.total_batch_size")
    return (f"a total batch of {total} cannot be split evenly over {world_size} ranks"
            + (f" x {clips} clips per video" if clips > 1 else "")
            + "; change schedule.total_batch_size or the number of ranks")


def check_engine(cfg: Any, zero_stage: int, origin: str) -> None:
    """Combinations of the experiment config with the DeepSpeed JSON's ZeRO stage (``origin`` names the JSON) that
    are refused when a run starts, before the engine is built: one line naming both sides.

    ZeRO-3 with ``run.compile``: ZeRO-3 gathers a partitioned weight when its module runs or when the weight is
    read during the forward, but not while dynamo traces a compiled block (it must not guard on the weight's
    volatile state), so a compiled block sees ZeRO-3's empty placeholder of a weight it reads directly (the
    attention's ``qkv.weight``)."""
    if zero_stage == 3 and cfg.run.compile:
        raise ConfigError(f"{cfg.source}: run.compile=true with ZeRO stage 3 ({origin}) is not supported: compiled "
                          f"blocks would read ZeRO-3's empty weight placeholders; set run.compile=false or use a "
                          f"ZeRO-2 config (ds_configs/zero2.json)")
