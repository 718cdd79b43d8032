"""Fixed sinusoidal position tables (not weights: they are rebuilt from the token grid), and the resampling
of a learned table that a checkpoint brings to another token grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from motionmae_ds.models.validation import ModelConfigError, check_choice

POS_EMBED_KINDS = ("sincos_1d", "sincos_3d")


def sincos_1d_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim): channel j of position p is sin (j even) or cos (j odd) of
    p / 10000^(2*(j//2)/dim). Pairs are interleaved, not split into halves, because that is the
    layout VideoMAE and HF transformers use; exported weights must see the same table."""
    # float64 first: the reference tables are built in double precision and then rounded once.
    # On the CPU even when the default device is meta: the values are needed, and meta kernels
    # for these ops take seconds to load.
    pos = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]
    pair = torch.div(torch.arange(dim, device="cpu"), 2, rounding_mode="floor").to(torch.float64)
    angle = pos / torch.pow(10000.0, 2.0 * pair / dim)
    table = torch.where(torch.arange(dim, device="cpu") % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


def sincos_3d_table(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(t*h*w, dim) separable table: a 1-D table per axis, concatenated along channels.
    Time gets about a quarter of the channels; height and width share the rest evenly."""
    if dim % 2 != 0:
        raise ModelConfigError(f"sincos_3d needs an even embedding dim, got {dim}")
    t, h, w = grid
    dim_t = 2 * (dim // 8)
    dim_h = 2 * ((dim - dim_t) // 4)
    dim_w = dim - dim_t - dim_h
    tab_t = sincos_1d_table(t, dim_t)[:, None, None, :].expand(t, h, w, dim_t)
    tab_h = sincos_1d_table(h, dim_h)[None, :, None, :].expand(t, h, w, dim_h)
    tab_w = sincos_1d_table(w, dim_w)[None, None, :, :].expand(t, h, w, dim_w)
    return torch.cat([tab_t, tab_h, tab_w], dim=-1).reshape(t * h * w, dim)


def build_pos_table(kind: str, grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(1, t*h*w, dim) table for tokens in (t h w) order."""
    check_choice("pos_embed", kind, POS_EMBED_KINDS)
    t, h, w = grid
    table = sincos_1d_table(t * h * w, dim) if kind == "sincos_1d" else sincos_3d_table(grid, dim)
    return table[None].to(torch.get_default_device())


def resample_pos_embed(table: torch.Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]
                       ) -> torch.Tensor:
    """A learned (1, t*h*w, D) table on ``src_grid`` -> (1, t'*h'*w', D) on ``dst_grid`` by trilinear
    resampling over (t, h, w); the same table when the grids agree."""
    if tuple(src_grid) == tuple(dst_grid):
        return table
    d = table.shape[-1]
    vol = table.reshape(1, *src_grid, d).permute(0, 4, 1, 2, 3).float()
    vol = F.interpolate(vol, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return vol.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(table.dtype)
