"""Section dataclasses that pretraining and finetuning share, each field declared once.

Defaults here are the pretraining ones; a job that differs subclasses the section and overrides the
default (``finetune.py``) or adds its own fields (``pretrain.py``, ``finetune.py``). A field's type is
what the loader checks a YAML value against, so ``Optional[int]`` means "an integer or null".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class ModelSection:
    # a size from models.registry (vit_tiny ... vit_huge); embed_dim/depth/num_heads override it
    name: str = "vit_base"
    num_frames: int = 16
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    pos_embed: str = "sincos_1d"
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False


@dataclass
class DataSection:
    # synthetic: generate (once, cached) the embedded default videos instead of reading the list file(s)
    synthetic: bool = False
    root: str = ""
    list_format: str = "auto"
    # frame-folder entries: image names inside a folder (one integer field) and the first frame's number
    frame_template: str = "img_{:05d}.jpg"
    frame_start: int = 1
    sampling_rate: int = 4
    flip: bool = True
    # random-resized-crop area range
    scale: tuple[float, float] = (0.5, 1.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decode_backend: str = "auto"
    num_workers: int = 2
    loader_timeout_s: float = 300.0
    # stop the run when more than this fraction of an epoch's samples could not be decoded
    max_bad_fraction: float = 0.05
    # train from WebDataset tar shards instead of the (training) list file: "DIR/shard-{000000..000123}.tar",
    # local paths or fsspec URLs (launch/make_shards.py writes them; motionmae_ds/data/shards.py reads them)
    shards: str = ""
    # where synthetic videos are cached; empty = $MOTIONMAE_CACHE or ~/.cache/motionmae_ds
    cache_dir: str = ""
    # size of the synthetic set (None = the generator's defaults); tests use tiny ones
    synthetic_videos: Optional[int] = None
    synthetic_frames: Optional[int] = None
    synthetic_size: Optional[int] = None


@dataclass
class DataSource:
    """One entry of ``data.sources`` (a pretraining mixture, data/mixture.py): a list file or a shard set, its
    root, its share of every epoch and its temporal stride."""
    # a short name for the logs; empty = data.sources[i]
    name: str = ""
    list_file: str = ""
    shards: str = ""
    # prefix of the list's relative paths; empty = data.root
    root: str = ""
    # the source's share of every epoch's samples, relative to the other entries' weights
    weight: float = 1.0
    # frames between two sampled frames; None = data.sampling_rate
    sampling_rate: Optional[int] = None


@dataclass
class OptimSection:
    # lr for a total batch of 256; the engine scales it linearly to the actual total batch
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    # cosine-anneal weight decay to this value; None keeps it constant
    weight_decay_end: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass
class ScheduleSection:
    epochs: int = 800
    warmup_epochs: int = 40
    # per-device micro batch
    batch_size: int = 32
    # give at most one of these two; neither means accumulation 1
    accum_steps: Optional[int] = None
    total_batch_size: Optional[int] = None


@dataclass
class RunSection:
    seed: int = 0
    # empty = runs/<config file stem>
    output_dir: str = ""
    log_every: int = 10
    save_every_epochs: int = 1
    # also checkpoint mid-epoch every N optimizer steps (0 = off)
    save_every_steps: int = 0
    keep_last: int = 2
    # torch.compile each transformer block (regional compilation); checkpoint keys stay the eager ones
    compile: bool = False
