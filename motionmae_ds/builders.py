"""Experiment config -> model, encoder, mask generator, datasets, DeepSpeed engine. The only place that maps
config keys to the constructors of the models and data packages."""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from torch import nn

from motionmae_ds.checkpoint import load_into
from motionmae_ds.config import ConfigError, PretrainConfig, batch_layout
from motionmae_ds.config.checks import check_engine
from motionmae_ds.config.pretrain import pretrain_sources
from motionmae_ds.config.sections import DataSource
from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.lists import ListFormatError, read_list
from motionmae_ds.data.mixture import MixtureDataset
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.data.shards import ShardClipDataset, ShardError, index_part, merge_index, shard_urls
from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.models import build_classifier, build_mask_generator, build_pretrain_model
from motionmae_ds.models.attentive import AttentiveProbe
from motionmae_ds.models.classifier import LinearProbe
from motionmae_ds.models.masking import build_decoder_mask
from motionmae_ds.models.registry import resolve_size
from motionmae_ds.models.vit import VisionTransformerEncoder, init_vit_weights
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.ds_config import offload_device, zero_stage


def in_chans(cfg: Any) -> int:
    """Input channels of every model of ``cfg``: the data's normalisation has one mean per channel."""
    return len(cfg.data.mean)


def model_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``build_pretrain_model`` for this config (also used for FLOP counting)."""
    m, t = cfg.model, cfg.targets
    return dict(
        name=m.name, num_frames=m.num_frames, img_size=m.img_size, patch_size=m.patch_size,
        tubelet_size=m.tubelet_size, in_chans=in_chans(cfg), embed_dim=m.embed_dim, depth=m.depth,
        num_heads=m.num_heads, decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
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
        patch_size=m.patch_size, tubelet_size=m.tubelet_size, in_chans=in_chans(cfg), embed_dim=m.embed_dim,
        depth=m.depth, num_heads=m.num_heads, pos_embed=m.pos_embed, drop_path_rate=m.drop_path_rate,
        head_dropout=m.head_dropout, init_scale=m.init_scale, grad_checkpointing=m.grad_checkpointing)


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The pretraining model, its encoder from ``model.init_encoder`` when one is named."""
    try:
        model = build_pretrain_model(**model_kwargs(cfg))
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: model: {exc}") from None
    if cfg.model.init_encoder:
        try:
            load_into(model, cfg.model.init_encoder, "continue_pretraining")
        except Exception as exc:  # one line naming the source, whatever the format's loader raised
            raise ConfigError(f"{cfg.source}: model.init_encoder={cfg.model.init_encoder}: {exc}") from None
    return model


def build_masker(cfg: PretrainConfig, grid: tuple[int, int, int]) -> Any:
    """The encoder's mask generator of ``masking.kind`` / ``masking.ratio`` over the token ``grid``."""
    try:
        return build_mask_generator(kind=cfg.masking.kind, grid=grid, ratio=cfg.masking.ratio)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: masking: {exc}") from None


def build_decoder_masker(cfg: PretrainConfig, grid: tuple[int, int, int]) -> Any:
    """The decoder-mask generator of ``masking.decoder_*``, or None when decoder masking is off."""
    m = cfg.masking
    try:
        return build_decoder_mask(kind=m.decoder_kind, grid=grid, ratio=m.decoder_ratio, heads=m.decoder_heads)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: masking: {exc}") from None


def mask_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """The masking arguments of ``pretrain_macs`` for this config (encoder and decoder masks)."""
    m = cfg.masking
    return dict(mask_ratio=m.ratio, mask_kind=m.kind, decoder_ratio=m.decoder_ratio, decoder_heads=m.decoder_heads)


def cache_dir(cfg: PretrainConfig) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    return Path(os.environ.get("MOTIONMAE_CACHE", Path.home() / ".cache" / "motionmae_ds"))


def resolve_list_file(cfg: PretrainConfig) -> str:
    """The training list: the configured one (a mixture's: its first source's), or the embedded synthetic set
    (generated once, cached).

    Call on every rank: generation is idempotent, and rank 0 does it first while the others wait.
    """
    if not cfg.data.synthetic:
        first = pretrain_sources(cfg)[0]
        return first.shards or first.list_file
    return str(synthetic_set(cfg, "pretrain"))


def synthetic_set(cfg: Any, kind: str) -> Any:
    """The embedded synthetic set of ``kind`` (``pretrain`` list file, or ``motion_classes`` split -> list),
    generated once and cached. Call on every rank: rank 0 generates first while the others wait."""
    d = cfg.data
    sizes = dict(num_videos=d.synthetic_videos, num_frames=d.synthetic_frames, size=d.synthetic_size)
    custom = [f"{k}{v}" for k, v in sizes.items() if v is not None]
    # non-default sets get their own directory so a test's tiny set never replaces the demo's cache
    root = cache_dir(cfg) / ("synthetic_" + "_".join(custom) if custom else "synthetic")
    if dist_utils.is_main():
        made = ensure_synthetic_dataset(root, kind=kind, seed=0, **sizes)
    dist_utils.barrier()
    if not dist_utils.is_main():
        made = ensure_synthetic_dataset(root, kind=kind, seed=0, **sizes)
    return made


def read_records(data: Any, list_file: str, where: str, root: Optional[str] = None) -> list:
    """The entries of ``list_file`` read with a config's ``data`` section (format, root unless ``root`` is given,
    frame-folder naming); a bad or empty list is a ConfigError whose message starts with ``where``."""
    try:
        records = read_list(list_file, fmt=data.list_format, root=data.root if root is None else root,
                            frame_template=data.frame_template, frame_start=data.frame_start)
    except (ListFormatError, ValueError, OSError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not records:
        raise ConfigError(f"{where}: no videos listed")
    return records


def training_records(cfg: Any, list_file: str, where: str, source: Optional[DataSource] = None,
                     pad: bool = True) -> tuple[list, Callable[..., Any]]:
    """(records, dataset class) of a training set: with shards (``data.shards``, or ``source``'s) the shards'
    index (every rank scans its share of the shards, all get the whole) and ``ShardClipDataset``, padded to
    whole batches on every rank unless ``pad`` is off (a mixture's member: the mixture sizes the epoch), else the
    list's entries (``source``'s root, or ``data.root``)."""
    shards, key = (source.shards, where) if source is not None else (cfg.data.shards, f"{cfg.source}: data.shards")
    if not shards:
        return read_records(cfg.data, list_file, where, None if source is None else source.root), VideoClipDataset
    found, error = [], None
    try:
        found = index_part(shard_urls(shards), dist_utils.rank(), dist_utils.world_size())
    except ShardError as exc:
        error = str(exc)
    gathered = dist_utils.gather_objects([(found, error)])  # every rank raises alike, none waits
    try:
        errors = [e for _, e in gathered if e]
        if errors:
            raise ShardError(errors[0])
        index = merge_index([item for part, _ in gathered for item in part], shards)
    except ShardError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return index, functools.partial(ShardClipDataset, pad_to=global_batch(cfg) if pad else 1)


def global_batch(cfg: Any) -> int:
    """Videos one optimizer step takes over all ranks (micro batch x accumulation x world size)."""
    world = dist_utils.world_size()
    micro, accum, _ = batch_layout(cfg, world)
    return world * micro * accum


def source_dataset(cfg: PretrainConfig, source: DataSource, where: str, seed: int, pad: bool = True,
                   mode: str = "pretrain") -> Any:
    """The clip dataset over one source (its list or shards, root and sampling rate)."""
    records, dataset_class = training_records(cfg, source.list_file, where, source, pad)
    d = cfg.data
    try:
        return dataset_class(
            records, mode=mode, num_frames=cfg.model.num_frames, sampling_rate=source.sampling_rate,
            input_size=cfg.model.img_size, scale=d.scale, flip=d.flip, mean=d.mean, std=d.std,
            seed=seed, backend=d.decode_backend, num_repeats=d.num_repeats if mode == "pretrain" else 1,
        )
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data: {exc}") from None


def build_dataset(cfg: PretrainConfig, list_file: str, mode: str = "pretrain") -> Any:
    """The pretraining dataset of one source: ``list_file`` (or data.shards) with data.root and data.sampling_rate,
    or the one entry of data.sources."""
    first = pretrain_sources(cfg)[0]
    if cfg.data.sources:
        key = f"shards={first.shards}" if first.shards else f"list_file={first.list_file}"
        return source_dataset(cfg, first, f"{cfg.source}: data.sources[0].{key}", cfg.run.seed, mode=mode)
    where = f"{cfg.source}: data.shards" if first.shards else f"data.list_file={list_file}"
    return source_dataset(cfg, dataclasses.replace(first, list_file=list_file), where, cfg.run.seed, mode=mode)


def build_pretrain_set(cfg: PretrainConfig, list_file: str, mode: str = "pretrain") -> Any:
    """The pretraining set: one source's dataset (``build_dataset`` over ``list_file``), or with two or more
    ``data.sources`` a ``MixtureDataset`` of one dataset per source, each with its own root, sampling rate and
    seed. A mixture's epoch holds the sources' videos together rounded down to whole optimizer steps over all
    ranks, so every place of it is trained on and each source's share of an epoch is exactly its apportioned
    count."""
    sources = pretrain_sources(cfg)
    if len(sources) == 1:
        return build_dataset(cfg, list_file, mode)
    datasets = []
    for i, source in enumerate(sources):
        key = f"shards={source.shards}" if source.shards else f"list_file={source.list_file}"
        datasets.append(source_dataset(cfg, source, f"{cfg.source}: data.sources[{i}].{key}",
                                       derive_seed(cfg.run.seed, i), pad=False, mode=mode))
    total, batch = sum(len(d) for d in datasets), global_batch(cfg)
    if total < batch:
        raise ConfigError(f"{cfg.source}: data.sources: {total} videos in all give no full optimizer step of "
                          f"{batch} videos (batch x accumulation x world size)")
    return MixtureDataset(datasets, [s.name for s in sources], [s.weight for s in sources], cfg.run.seed,
                          epoch_len=total // batch * batch)


# -- finetuning ---------------------------------------------------------------------------------------

def build_finetune_model(cfg: Any) -> nn.Module:
    """The classifier of a ``FinetuneConfig``, wrapped in a ``LinearProbe`` or an ``AttentiveProbe`` as
    ``finetune.probe`` says, without weights."""
    ft = cfg.finetune
    try:
        clf = build_classifier(**classifier_kwargs(cfg))
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: model: {exc}") from None
    if ft.probe == "attentive":
        try:
            return AttentiveProbe(clf, ft.probe_heads, ft.probe_queries)
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: finetune.probe_heads={ft.probe_heads}: {exc}") from None
    return LinearProbe(clf, ft.probe_norm) if ft.probe == "linear" else clf


def build_encoder(cfg: Any) -> VisionTransformerEncoder:
    """The pretraining encoder (with its final norm) of a ``FinetuneConfig``'s model section, randomly
    initialised: what frozen-feature evaluations (features, k-NN, VOS) run."""
    kw = classifier_kwargs(cfg)
    try:
        size = resolve_size(kw["name"], kw["embed_dim"], kw["depth"], kw["num_heads"])
        encoder = VisionTransformerEncoder(kw["num_frames"], kw["img_size"], kw["patch_size"], kw["tubelet_size"],
                                           kw["in_chans"], size.embed_dim, size.depth, size.num_heads,
                                           pos_embed=kw["pos_embed"])
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: model: {exc}") from None
    encoder.apply(init_vit_weights)
    return encoder


def classifier_of(model: nn.Module) -> nn.Module:
    """The ``VideoClassifier`` inside a model built by ``build_finetune_model``."""
    return model.backbone if isinstance(model, (LinearProbe, AttentiveProbe)) else model


def resolve_lists(cfg: Any) -> dict[str, str]:
    """split -> list file of a ``FinetuneConfig``: the configured ones, or the embedded motion-classes set
    (generated once, cached; call on every rank, rank 0 generates first)."""
    if not cfg.data.synthetic:
        return {k: v for k, v in (("train", cfg.data.shards or cfg.data.train_list), ("val", cfg.data.val_list),
                                  ("test", cfg.data.test_list)) if v}
    return dict(synthetic_set(cfg, "motion_classes"))


def build_split(cfg: Any, list_file: str, mode: str) -> Any:
    """The finetuning dataset of one split (``train`` | ``val`` | ``test``) of a ``FinetuneConfig``."""
    records, dataset_class = (training_records(cfg, list_file, list_file) if mode == "train"
                              else (read_records(cfg.data, list_file, list_file), VideoClipDataset))
    bad = [r for r in records if not 0 <= int(r.label) < cfg.model.num_classes]
    if bad:
        raise ConfigError(f"{list_file}: label {bad[0].label} of {bad[0].path} outside 0..{cfg.model.num_classes - 1}"
                          f" (model.num_classes={cfg.model.num_classes})")
    d = cfg.data
    common = dict(num_frames=cfg.model.num_frames, sampling_rate=d.sampling_rate, input_size=cfg.model.img_size,
                  short_side_size=cfg.short_side, mean=d.mean, std=d.std, seed=cfg.run.seed, backend=d.decode_backend,
                  sampling=d.sampling)
    if mode == "train":
        extra = dict(scale=d.scale, flip=d.flip, rand_aug=d.rand_aug or None, random_erase=d.random_erase,
                     num_repeats=d.num_repeats)
    elif mode == "test":
        extra = dict(test_clips=cfg.eval.test_clips, test_crops=cfg.eval.test_crops)
    else:
        extra = {}
    try:
        return dataset_class(records, mode=mode, **common, **extra)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data ({mode}): {exc}") from None


# -- the engine ---------------------------------------------------------------------------------------

def compile_blocks(model: nn.Module) -> int:
    """Regional compilation (``run.compile``): ``torch.compile`` every transformer block in place
    (``nn.Module.compile``). The module tree keeps its eager names, so state dicts and DeepSpeed checkpoints
    carry no ``_orig_mod.`` and load into compiled and eager runs alike; each block kind compiles once and
    its code is reused by every block of that shape. Returns the number of blocks compiled."""
    count = 0
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                block.compile()
                count += 1
    return count


def use_fused(device_type: str) -> bool:
    """torch's fused AdamW (one kernel for every parameter) on CUDA; the CPU keeps the default AdamW, whose
    numbers the CPU tests were measured with."""
    return device_type == "cuda"


def build_adamw(groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float,
                device_type: Optional[str] = None) -> torch.optim.AdamW:
    """A client torch AdamW over ``groups`` (DeepSpeed keeps its extra keys). ``device_type`` defaults to the
    DeepSpeed accelerator's; on CUDA the optimizer is the fused one. Under ZeRO-2 the fp32 master partitions
    live on the device, so the fused kernel runs there; with the optimizer offloaded to the CPU
    (``zero2_offload.json``, ``zero3_offload.json``) DeepSpeed runs this optimizer on CPU tensors, so it is
    built unfused (``device_type="cpu"``)."""
    # param_names is bookkeeping for us and tests; torch's optimizer would keep it anyway, but DeepSpeed
    # replaces "params" with flat partitions, so names would lie afterwards
    clean = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if device_type is None:
        device_type = "cuda" if get_accelerator().device_name().startswith("cuda") else "cpu"
    optimizer = torch.optim.AdamW(clean, lr=lr, betas=betas, eps=eps, fused=True if use_fused(device_type) else None)
    if use_fused(device_type):
        optimizer.register_step_pre_hook(steps_on_param_device)
    return optimizer


def steps_on_param_device(optimizer: torch.optim.Optimizer, args: Any = None, kwargs: Any = None) -> None:
    """Before each step of a fused AdamW: every ``state["step"]`` a float32 tensor on its parameter's device, as
    the fused kernel reads it there. torch's own ``load_state_dict`` moves it so, but DeepSpeed's universal-
    checkpoint loader assigns the step read from ``step.pt`` as it was saved (a host tensor), and the first fused
    step after a universal resume on CUDA would fail on a CPU step. A no-op once in place (a check per flat
    partition: ZeRO gives the optimizer a few)."""
    for group in optimizer.param_groups:
        if not group.get("fused"):
            continue
        for param in group["params"]:
            state = optimizer.state.get(param)
            step = state.get("step") if state else None
            if step is None:
                continue
            if not torch.is_tensor(step) or step.device != param.device or step.dtype != torch.float32:
                state["step"] = torch.as_tensor(step, dtype=torch.float32).to(param.device)


def build_engine(model: nn.Module, groups: list[dict[str, Any]], cfg: Any, ds_config: dict[str, Any], lr: float,
                 device: torch.device) -> Any:
    """The DeepSpeed engine over ``model`` with our client AdamW over ``groups`` (betas and eps from
    ``cfg.optim``, ``lr`` the schedule's peak): fused on CUDA, unless ZeRO offloads the optimizer step to the
    CPU, where DeepSpeed runs it on CPU tensors. Training, the GPU check and the memory tools build it here."""
    check_engine(cfg, zero_stage(ds_config), "the DeepSpeed config")
    offloaded = offload_device(ds_config) != "none"
    optimizer = build_adamw(groups, lr, cfg.optim.betas, cfg.optim.eps,
                            device_type="cpu" if offloaded else device.type)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine
