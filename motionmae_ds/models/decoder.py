"""A MotionMAE decoder: lifts encoded visible tokens to the decoder width, fills the masked places
with a learned mask token, adds its own position table and predicts pixels for masked tokens only."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn

from motionmae_ds.models.pos_embed import build_pos_table
from motionmae_ds.models.vit import LAYER_NORM_EPS, Block, BlockStack, drop_path_schedule


class Decoder(BlockStack):
    """`forward(x_vis, token_order, key_mask=None)` -> {prediction name: (B, M, out_dim)} for the M decoded
    masked tokens in the order `token_order` lists them. `heads` maps each prediction name to the attribute
    name of its linear layer; those attribute names are the state-dict names of checkpoints
    (`space_head.head`, `decoder.head_frame`), so they stay as they are."""

    def __init__(self, encoder_dim: int, grid: Sequence[int], dim: int, depth: int, num_heads: int,
                 out_dim: int, heads: Mapping[str, str], pos_embed: str = "sincos_1d",
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.encoder_to_decoder = nn.Linear(encoder_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", build_pos_table(pos_embed, tuple(grid), dim), persistent=False)
        rates = drop_path_schedule(drop_path_rate, depth)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.heads = dict(heads)
        for module_name in self.heads.values():
            self.add_module(module_name, nn.Linear(dim, out_dim))
        self.grad_checkpointing = grad_checkpointing

    def forward_features(self, x_vis: torch.Tensor, token_order: torch.Tensor,
                         key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, M, dim) normed features of the decoded masked tokens, before the prediction layers."""
        x_vis = self.encoder_to_decoder(x_vis)
        b, n_vis, d = x_vis.shape
        n_masked = token_order.shape[1] - n_vis
        pos = self.pos_embed.to(x_vis.dtype).expand(b, -1, -1)
        pos = torch.gather(pos, 1, token_order[..., None].expand(-1, -1, d))
        x = torch.cat([x_vis, self.mask_token.to(x_vis.dtype).expand(b, n_masked, d)], dim=1) + pos
        x = self.run_blocks(x, key_mask)
        return self.norm(x[:, n_vis:])

    def forward(self, x_vis: torch.Tensor, token_order: torch.Tensor,
                key_mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """token_order: (B, N_visible + M), visible token ids (ascending) then the M masked ones to decode
        (every masked token, or with decoder masking the kept ones); x_vis holds the encoder outputs for the
        first N_visible. key_mask (B, N_visible + M) bool: False marks padding places that no token attends
        to (decoder masking keeps different counts per sample); None = every place is a real token."""
        features = self.forward_features(x_vis, token_order, key_mask)
        return {name: getattr(self, module_name)(features) for name, module_name in self.heads.items()}
