"""The attentive probe, how V-JEPA and its successors compare frozen video encoders: learned query tokens attend
over every token of the frozen encoder's grid (one cross-attention block with an MLP), and a linear layer
classifies what they pooled. Mean pooling, which the linear probe uses, forgets where and when things happened;
cross-attention lets the probe pick them out.

Shapes: the encoder's tokens (B, N, D) -> the pooler's queries (B, Q, D) -> their mean (B, D) -> logits (B, C).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import Mlp

from motionmae_ds.models.classifier import VideoClassifier
from motionmae_ds.models.validation import ModelConfigError, check_positive_int
from motionmae_ds.models.vit import LAYER_NORM_EPS, VisionTransformerEncoder, attention

INIT_STD = 0.02


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries`` (B, Q, D) over ``tokens`` (B, N, D): queries from one projection,
    keys and values from another, all with biases."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ModelConfigError(f"attentive probe: num_heads={num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, q_len, d = queries.shape
        heads, head_dim = self.num_heads, d // self.num_heads
        q = self.q(queries).reshape(b, q_len, heads, head_dim).transpose(1, 2)
        k, v = self.kv(tokens).reshape(b, tokens.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, q_len, d))


class AttentivePooler(nn.Module):
    """``num_queries`` learned queries, one pre-norm cross-attention block (the tokens are normalised, the
    queries enter as they are) and an MLP on the queries, both residual."""

    def __init__(self, dim: int, num_heads: int, num_queries: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        check_positive_int("num_queries", num_queries)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.query_tokens, std=INIT_STD)
        # the two residual branches' output layers start smaller, by the depth rule of GPT-2 / V-JEPA's pooler
        with torch.no_grad():
            for layer in (self.xattn.proj, self.mlp.fc2):
                layer.weight.div_(math.sqrt(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        q = q + self.xattn(q, self.norm1(tokens))
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """A frozen encoder (always in eval mode, no gradients) under an attentive pooler and the classifier's
    linear head; only ``pooler.*`` and ``backbone.head.*`` train. ``forward(videos)`` -> logits (B, C)."""

    def __init__(self, backbone: VideoClassifier, num_heads: Optional[int] = None, num_queries: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        heads = num_heads if num_heads is not None else backbone.blocks[0].attn.num_heads
        self.pooler = AttentivePooler(backbone.embed_dim, heads, num_queries)
        for name, p in backbone.named_parameters():
            p.requires_grad = name.startswith("head.")

    def train(self, mode: bool = True) -> "AttentiveProbe":
        super().train(mode)
        self.backbone.eval()  # the features a frozen encoder gives at test time: no drop path
        return self

    def tokens(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens of the frozen encoder (its blocks; the classifier's untrained fc_norm is not used)."""
        with torch.no_grad():
            return VisionTransformerEncoder.forward(self.backbone, videos)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of token grids (B, N, D), or of several clips' grids of one video concatenated along N."""
        return self.backbone.head(self.pooler(tokens).mean(dim=1))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.classify(self.tokens(videos))
