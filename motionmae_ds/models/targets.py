"""Reconstruction targets on unnormalised pixels: tubelet patches of the frames and of their
temporal differences, with optional per-token normalisation. Everything here runs in fp32."""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from einops import rearrange

NORM_EPS = 1e-6

# ImageNet statistics of RGB pixels in [0, 1], what VideoMAE, timm and HF's VideoMAE normalise with: the model's
# default for undoing the loader's normalisation, and the configs' default for data.mean / data.std
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Tokens in (t h w) order, each token's values in (tubelet, patch row, patch column, channel) order.
_VIDEO = "b c (gt tt) (gh ph) (gw pw)"
_PATCHES = "b (gt gh gw) (tt ph pw c)"


def patchify(videos: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, P): tokens in (t h w) order, values in (p0 p1 p2 c) order."""
    return rearrange(videos, f"{_VIDEO} -> {_PATCHES}", tt=tubelet_size, ph=patch_size, pw=patch_size)


def unpatchify(patches: torch.Tensor, grid: Sequence[int], patch_size: int, tubelet_size: int) -> torch.Tensor:
    """Inverse of `patchify` for a (t, h, w) token grid."""
    gt, gh, gw = grid
    return rearrange(patches, f"{_PATCHES} -> {_VIDEO}", gt=gt, gh=gh, gw=gw, tt=tubelet_size, ph=patch_size,
                     pw=patch_size)


@functools.lru_cache(maxsize=16)
def normalization_tensors(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (1, C, 1, 1, 1) mean and std on ``device``, made once per device: building them from Python floats in
    every forward would be a blocking host-to-device copy on an accelerator, twice a step."""
    shape = (1, len(mean), 1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32, device=device).reshape(shape),
            torch.tensor(std, dtype=torch.float32, device=device).reshape(shape))


def unnormalize(videos: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the loader's (x - mean) / std in fp32. mean/std stay Python floats (not buffers)
    so that casting the module to bf16 cannot round them."""
    m, s = normalization_tensors(tuple(mean), tuple(std), videos.device)
    return videos.float() * s + m


def patches_at(videos: torch.Tensor, token_ids: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """``patchify(videos)`` gathered at ``token_ids`` (B, M) -> (B, M, P), read straight from the clip:
    one copy of the M tokens, where patchify-then-gather copies all N tokens and then the M."""
    b, _, _, h, w = videos.shape
    gh, gw = h // patch_size, w // patch_size
    # Token axes kept apart, values not merged: a view of the clip, so only the gather below copies.
    grid = rearrange(videos, f"{_VIDEO} -> b gt gh gw tt ph pw c", tt=tubelet_size, ph=patch_size, pw=patch_size)
    ti, rest = token_ids.div(gh * gw, rounding_mode="floor"), token_ids.remainder(gh * gw)
    hi, wi = rest.div(gw, rounding_mode="floor"), rest.remainder(gw)
    rows = torch.arange(b, device=videos.device)[:, None]
    return grid[rows, ti, hi, wi].reshape(b, token_ids.shape[1], -1)


def temporal_difference(pixels: torch.Tensor, granularity: int = 1, signed: bool = False) -> torch.Tensor:
    """D_t = x_{t+g} - x_t along dim 2 (absolute unless `signed`); the last g frames have no
    successor in the clip, so they repeat the last valid difference to keep T frames. Written into
    one output tensor (no separate difference, absolute value and concatenation copies)."""
    g = granularity
    out = torch.empty_like(pixels)
    valid = torch.sub(pixels[:, :, g:], pixels[:, :, :-g], out=out[:, :, :-g])
    if not signed:
        valid.abs_()
    out[:, :, -g:] = out[:, :, -g - 1:-g]
    return out


def normalize_per_token(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """Per token and channel: (x - mean) / (std + 1e-6) over the tubelet's pixels, with the
    unbiased std, which is how VideoMAE defines its normalised-pixel target."""
    b, n, p = patches.shape
    x = patches.reshape(b, n, p // channels, channels)
    mean = x.mean(dim=-2, keepdim=True)
    std = x.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return ((x - mean) / (std + NORM_EPS)).reshape(b, n, p)
