"""Learned positional tables (VideoMAE's) in a source we load: their grid (from the run config, or guessed from
the token count) and their trilinear resampling into the model's table, which then joins its state dict."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import nn

from motionmae_ds.checkpoint.layout import CheckpointError
from motionmae_ds.models.pos_embed import resample_pos_embed


def grid_from_config(config: Optional[Mapping[str, Any]]) -> Optional[tuple[int, int, int]]:
    model = config.get("model") if isinstance(config, Mapping) else None
    try:
        return (model["num_frames"] // model["tubelet_size"], model["img_size"] // model["patch_size"],
                model["img_size"] // model["patch_size"])
    except (TypeError, KeyError):
        return None


def guess_grid(num_tokens: int, target: tuple[int, int, int]) -> tuple[int, int, int]:
    """Source grid of a bare learned table: same temporal length as the model if that gives a square, else the
    model's spatial size."""
    t, h, w = target
    if num_tokens % t == 0 and math.isqrt(num_tokens // t) ** 2 == num_tokens // t:
        side = math.isqrt(num_tokens // t)
        return t, side, side
    if num_tokens % (h * w) == 0:
        return num_tokens // (h * w), h, w
    raise CheckpointError(f"learned pos_embed with {num_tokens} tokens fits no grid near the model's {target}")


def load_learned_pos(model: nn.Module, table: torch.Tensor, config: Optional[Mapping[str, Any]],
                     report: Any) -> None:
    """A learned table (VideoMAE's) resampled to the model's grid into its ``pos_embed`` buffer; what happened
    goes to ``report`` (a ``weights.LoadReport``)."""
    dst = tuple(model.grid)
    if table.dim() == 2:
        table = table[None]
    src = grid_from_config(config)
    if src is None or src[0] * src[1] * src[2] != table.shape[1]:
        src = guess_grid(table.shape[1], dst)
    if table.shape[-1] != model.pos_embed.shape[-1]:
        report.mismatched.append(f"pos_embed {tuple(table.shape)} vs model {tuple(model.pos_embed.shape)}")
        return
    resampled = resample_pos_embed(table, src, dst)
    with torch.no_grad():
        model.pos_embed.copy_(resampled.to(model.pos_embed.dtype))
    # a learned table is a weight: register it again as a persistent buffer so that this model's checkpoints
    # keep it (the fixed default is rebuilt from the grid, not stored)
    model.register_buffer("pos_embed", model.pos_embed, persistent=True)
    report.loaded.append("pos_embed")
    how = "copied" if src == dst else f"resampled from grid {src} to {dst}"
    report.notes.append(f"learned pos_embed {how} into the model's table")
