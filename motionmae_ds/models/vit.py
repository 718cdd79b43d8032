"""ViT building blocks for video: tubelet embedding, attention, block, and the encoder. The CPU-only
speed paths they pick by device and dtype live in models/cpu_kernels.py."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch.utils.checkpoint import checkpoint

from motionmae_ds.models import cpu_kernels
from motionmae_ds.models.pos_embed import build_pos_table
from motionmae_ds.models.validation import ModelConfigError, check_divides

LAYER_NORM_EPS = 1e-6
# "sdpa": torch's fused kernels; "matmul": models/cpu_kernels.py's tiled matmuls and softmax;
# "auto": per call, the matmul path for bf16 on the CPU and SDPA everywhere else.
ATTENTION_BACKENDS = ("auto", "sdpa", "matmul")


def check_attention_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ModelConfigError(f"attention backend {name!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto",
              key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Non-causal attention over (B, H, N, d) by the path `backend` (one of ATTENTION_BACKENDS).
    `key_mask`: bool (B, N_keys), False = a padding token no query attends to (every row needs a True)."""
    if backend == "auto":
        backend = "matmul" if cpu_kernels.prefers_matmul_attention(q) else "sdpa"
    if backend == "sdpa":
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None])
    if backend == "matmul":
        return cpu_kernels.matmul_attention(q, k, v, key_mask)
    raise ModelConfigError(f"attention backend {backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}")


class TubeletEmbed(nn.Module):
    """Non-overlapping (tubelet x patch x patch) cubes -> tokens in (t h w) order."""

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int,
                 in_chans: int, embed_dim: int) -> None:
        super().__init__()
        check_divides("num_frames", num_frames, "tubelet_size", tubelet_size)
        check_divides("img_size", img_size, "patch_size", patch_size)
        self.input_shape = (in_chans, num_frames, img_size, img_size)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if tuple(videos.shape[1:]) != self.input_shape:
            raise ModelConfigError(
                f"videos of shape {tuple(videos.shape)} do not match the model's (B, C, T, H, W) = "
                f"(B, {', '.join(map(str, self.input_shape))})"
            )
        # A bf16 module (DeepSpeed casts it) still receives fp32 clips from the loader.
        videos = videos.to(self.proj.weight.dtype)
        if videos.device.type == "cpu":
            return cpu_kernels.gemm_tubelet_embed(videos, self.proj)
        return self.proj(videos).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; qkv has no bias tensor of its own but q_bias/v_bias (k gets none),
    the parameter layout of VideoMAE checkpoints. `backend` (ATTENTION_BACKENDS) is this module's
    attention path, set model-wide through `set_attention_backend`; it is not part of the state dict."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = check_attention_backend(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v, self.backend, key_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        # timm's Mlp: fc1, GELU, fc2 (its dropouts at p=0 and its norm an Identity, both no-ops), with
        # the state-dict names mlp.fc1 / mlp.fc2 of VideoMAE checkpoints.
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 at the first block to `rate` at the last."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


class BlockStack(nn.Module):
    """Mixin for modules with `self.blocks`: runs them, each optionally under activation checkpointing,
    and sets their attention path."""

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = bool(enabled)

    def set_attention_backend(self, name: str) -> None:
        """Every attention layer in this module takes the path `name` (one of ATTENTION_BACKENDS)."""
        check_attention_backend(name)
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = name

    def run_blocks(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`key_mask` (B, N) bool, False = padding that no token attends to; None = every token counts."""
        # Non-reentrant: works with shared weights, kwargs-free blocks and ZeRO's grad hooks;
        # the default preserve_rng_state keeps DropPath's draw identical in the recompute.
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, key_mask, use_reentrant=False) if use_ckpt else blk(x, key_mask)
        return x


class VisionTransformerEncoder(BlockStack):
    """Tubelet embedding + fixed position table + blocks (+ final LayerNorm when `final_norm`).
    `forward(videos, visible_ids)` keeps only the listed tokens after adding positions."""

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int,
                 in_chans: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, pos_embed: str = "sincos_1d", final_norm: bool = True,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.patch_embed = TubeletEmbed(num_frames, img_size, patch_size, tubelet_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid
        self.num_tokens = self.patch_embed.num_tokens
        self.embed_dim = embed_dim
        self.pos_embed_kind = pos_embed
        self.register_buffer("pos_embed", build_pos_table(pos_embed, self.grid, embed_dim), persistent=False)
        rates = drop_path_schedule(drop_path_rate, depth)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS) if final_norm else nn.Identity()
        self.grad_checkpointing = grad_checkpointing

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(videos)
        return x + self.pos_embed.to(x.dtype)

    def forward(self, videos: torch.Tensor, visible_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed(videos)
        if visible_ids is not None:
            x = torch.gather(x, 1, visible_ids[..., None].expand(-1, -1, x.shape[-1]))
        return self.norm(self.run_blocks(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE-style init, for `model.apply`: xavier-uniform linears with zero bias, unit LayerNorms,
    and the patch projection treated as the linear map it is."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
