"""Resampling a learned position table to another token grid (models/pos_embed.py)."""
import torch

from motionmae_ds.models.pos_embed import resample_pos_embed


def test_resample_identity_and_linear_in_time():
    table = torch.randn(1, 2 * 3 * 3, 8)
    assert resample_pos_embed(table, (2, 3, 3), (2, 3, 3)) is table
    lin = torch.arange(4.0)[:, None, None, None].expand(4, 2, 2, 1).reshape(1, 16, 1)
    out = resample_pos_embed(lin, (4, 2, 2), (2, 2, 2)).reshape(2, 2, 2)
    # align_corners=False halving: output t samples source t = 0.5 and 2.5
    assert torch.allclose(out[0], torch.full((2, 2), 0.5)) and torch.allclose(out[1], torch.full((2, 2), 2.5))
