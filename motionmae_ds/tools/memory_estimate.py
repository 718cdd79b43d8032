"""Per-GPU memory of a pretraining recipe: model states, ZeRO buffers, activations; and step FLOPs.

Model states come from DeepSpeed's estimators for the JSON's ZeRO stage (2 or 3) and offload settings.
Activations are measured, not modelled: a forward + backward of the recipe's model (full width and depth,
bf16, SDPA attention as on a GPU, activation checkpointing as configured) runs on the CPU at a few small frame
counts under a dispatch mode that counts the bytes of every live tensor storage. The peak minus weights and
gradients, per sample (slope over two batch sizes), is fitted as a + b * frames and evaluated at the recipe's
frame count. Linear is exact in shape here: with SDPA no tokens x tokens matrix is kept, so every tensor is
tokens x width, and tokens (encoder: visible ones, decoders: all, or with decoder masking the visible and the
kept masked ones) grow linearly with frames.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from motionmae_ds.builders import build_decoder_masker, build_masker, mask_kwargs, model_kwargs
from motionmae_ds.config import PretrainConfig, batch_layout
from motionmae_ds.models import build_pretrain_model
from motionmae_ds.models.flops import TRAIN_FLOPS_PER_MAC, pretrain_macs
from motionmae_ds.runtime.ds_config import offload_device, zero_stage

GiB = 1024 ** 3
# 2 bytes (bf16) per bucket element; DeepSpeed documents 4.5x the bucket sizes with overlap_comm
BUCKET_FACTOR_OVERLAP = 4.5


class LiveBytes(TorchDispatchMode):
    """Counts bytes of tensor storages created inside the mode while they are alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = nbytes
                    self.live += nbytes
                    weakref.finalize(storage, self._free, nbytes)
                    self.peak = max(self.peak, self.live)
        return out


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


def _model_kwargs(cfg: PretrainConfig, num_frames: int) -> dict[str, Any]:
    return dict(model_kwargs(cfg), num_frames=num_frames)


def peak_step_bytes(cfg: PretrainConfig, num_frames: int, batch_size: int, seed: int = 0) -> int:
    """Peak bytes of one bf16 forward + backward beyond the weights (gradients are dropped when ready)."""
    torch.manual_seed(seed)
    model = build_pretrain_model(**_model_kwargs(cfg, num_frames)).to(torch.bfloat16)
    for p in model.parameters():
        # ZeRO-2's hooks copy each gradient into its bucket as soon as it is ready and drop it; so do we
        p.register_post_accumulate_grad_hook(_drop_grad)
    masker = build_masker(cfg, tuple(model.grid))
    decoder_masker = build_decoder_masker(cfg, tuple(model.grid))
    model.set_attention_backend("sdpa")  # what a GPU runs; the CPU-bf16 default keeps tokens x tokens scores
    with LiveBytes() as meter:
        size = cfg.model.img_size
        videos = torch.randn(batch_size, 3, num_frames, size, size, dtype=torch.bfloat16)
        mask = masker(batch_size)
        keep = None if decoder_masker is None else decoder_masker(batch_size)
        model(videos, mask, decoder_keep=keep)["loss"].backward()
        del videos, mask
    return meter.peak


@dataclass
class ActivationFit:
    frames: list[int]
    per_sample_bytes: list[float]   # measured at each of `frames`
    intercept: float                # a in a + b * frames
    slope: float                    # b
    target_frames: int

    @property
    def bytes_per_sample(self) -> float:
        return self.intercept + self.slope * self.target_frames


def fit_activation_bytes(cfg: PretrainConfig, frames: tuple[int, int], batches: tuple[int, int] = (1, 2)
                         ) -> ActivationFit:
    """Per-sample activation bytes at two small frame counts, extrapolated to cfg.model.num_frames."""
    if frames[0] == frames[1] or batches[0] == batches[1]:
        raise ValueError(f"need two different frame counts and batch sizes, got frames={frames} batches={batches}")
    per_sample = []
    for t in frames:
        lo, hi = (peak_step_bytes(cfg, t, b) for b in batches)
        per_sample.append((hi - lo) / (batches[1] - batches[0]))
    slope = (per_sample[1] - per_sample[0]) / (frames[1] - frames[0])
    intercept = per_sample[0] - slope * frames[0]
    return ActivationFit(list(frames), per_sample, intercept, slope, cfg.model.num_frames)


def model_states(num_params: int, gpus_per_node: int, num_nodes: int, ds_config: dict[str, Any],
                 largest_layer_params: int = 0) -> dict[str, int]:
    """Per-GPU and per-node CPU bytes of the model states under the JSON's ZeRO stage and offload settings,
    from DeepSpeed's own estimators: ZeRO-0..2 keep the whole bf16 weights on every GPU (2 bytes/param) and
    partition the fp32 master, moments and gradients (16), or move those to the CPU with ``offload_optimizer``;
    ZeRO-3 partitions the weights too (18 bytes/param over all GPUs) and gathers one layer at a time
    (``largest_layer_params``, 4 bytes each), or keeps only that layer on the GPU when ``offload_param`` moves
    the weights to the CPU as well. Our models are built whole and then partitioned (no ``zero.Init``)."""
    stage = zero_stage(ds_config)
    opt_off = offload_device(ds_config, "optimizer") != "none"
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        param_off = offload_device(ds_config, "param") != "none"
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            num_params, largest_layer_params, gpus_per_node, num_nodes, cpu_offload=opt_off,
            cpu_offload_params=param_off, zero_init=False)
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(num_params, gpus_per_node, num_nodes, cpu_offload=opt_off)
        if not opt_off:
            cpu = 0
    return {"stage": stage, "gpu": int(gpu), "cpu_per_node": int(cpu)}


def bucket_bytes(ds_config: dict[str, Any]) -> int:
    """ZeRO communication buffers (bf16) from the JSON's bucket sizes: ZeRO-2's reduce and all-gather buckets,
    ZeRO-3's reduce bucket and parameter prefetch bucket."""
    zero = ds_config.get("zero_optimization", {})
    other = "stage3_prefetch_bucket_size" if zero_stage(ds_config) == 3 else "allgather_bucket_size"
    elements = int(float(zero.get("reduce_bucket_size", 5e8))) + int(float(zero.get(other, 5e8)))
    factor = BUCKET_FACTOR_OVERLAP if zero.get("overlap_comm", False) else 1.0
    return int(elements * 2 * factor)


def largest_layer_params(cfg: PretrainConfig) -> int:
    """Parameters of the largest module that holds parameters of its own (what ZeRO-3 gathers at once)."""
    with torch.device("meta"):
        model = build_pretrain_model(**_model_kwargs(cfg, cfg.model.num_frames))
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def count_params(cfg: PretrainConfig) -> int:
    with torch.device("meta"):
        model = build_pretrain_model(**_model_kwargs(cfg, cfg.model.num_frames))
    return sum(p.numel() for p in model.parameters())


def step_flops(cfg: PretrainConfig, world_size: int) -> dict[str, float]:
    """Training FLOPs per sample and per optimizer step (6 x forward MACs: fwd + 2x bwd, 2 FLOPs/MAC)."""
    macs = pretrain_macs(**mask_kwargs(cfg), **_model_kwargs(cfg, cfg.model.num_frames))
    # activation checkpointing reruns every forward once more in the backward
    recompute = 1.0 + (2.0 / TRAIN_FLOPS_PER_MAC if cfg.model.grad_checkpointing else 0.0)
    per_sample = TRAIN_FLOPS_PER_MAC * float(macs)
    total = batch_layout(cfg, world_size)[2]
    return {"forward_macs_per_sample": float(macs), "train_flops_per_sample": per_sample,
            "train_flops_per_step": per_sample * total, "executed_flops_per_step": per_sample * total * recompute}


def largest_fitting_micro(per_sample: float, fixed: float, budget: float, candidates: list[int]) -> int:
    """The largest micro batch in `candidates` whose fixed + micro * per_sample stays within `budget`."""
    fitting = [m for m in candidates if fixed + m * per_sample <= budget]
    if not fitting:
        raise ValueError(f"not even micro batch {min(candidates)} fits: {fixed / GiB:.1f} GiB fixed + "
                         f"{per_sample / GiB:.2f} GiB/sample > {budget / GiB:.1f} GiB")
    return max(fitting)


def micro_candidates(cfg: PretrainConfig, world_size: int) -> list[int]:
    """``schedule.batch_size`` values (videos per device) whose micro-batches of batch_size x clips_per_video
    clips divide the per-GPU share of the global batch (accumulation makes up the rest)."""
    clips = getattr(cfg, "clips_per_video", 1)
    total = cfg.schedule.total_batch_size or batch_layout(cfg, world_size)[2]
    share = total // world_size
    fitting = [m for m in range(1, share // clips + 1) if share % (m * clips) == 0]
    return fitting if total % world_size == 0 and fitting else [1]


def gib(n: float) -> float:
    return math.floor(n / GiB * 100) / 100
