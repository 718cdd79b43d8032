"""ViT building blocks for video: tubelet embedding, attention, MLP, block, and the encoder."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from motionmae_ds.models.pos_embed import build_pos_table
from motionmae_ds.models.validation import ModelConfigError, check_divides

LAYER_NORM_EPS = 1e-6
ATTENTION_BACKENDS = ("auto", "sdpa", "matmul")
_attention_backend = "auto"


def set_attention_backend(name: str) -> None:
    """Process-wide attention path: "sdpa" (fused kernels), "matmul" (two matmuls and a softmax)
    or "auto", which picks per call by device and dtype (see `attention`)."""
    global _attention_backend
    if name not in ATTENTION_BACKENDS:
        raise ModelConfigError(f"attention backend {name!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    _attention_backend = name


# Score elements per tile of `matmul_attention` (8 MiB in bf16): small enough to stay in cache and in
# the allocator's reused heap, large enough that each GEMM is big.
ATTENTION_TILE_ELEMENTS = 1 << 22


def _attention_tiles(heads: int, n: int, n_keys: int, budget: Optional[int] = None):
    """(head slice, query slice) pairs covering (heads, n) query rows, each tile's scores <= budget
    elements where possible: whole heads (n x n_keys scores each) grouped while they fit, else one
    head's queries in chunks. Either way a tile's rows are contiguous in a (heads, n, d) tensor."""
    budget = ATTENTION_TILE_ELEMENTS if budget is None else budget
    per_head = n * n_keys
    if per_head <= budget:
        group = max(1, budget // per_head)
        return [(slice(h, h + group), slice(0, n)) for h in range(0, heads, group)]
    chunk = max(64, budget // n_keys)
    return [(slice(h, h + 1), slice(i, i + chunk)) for h in range(heads) for i in range(0, n, chunk)]


class _MatmulAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v as matmuls and a softmax over tiles of (batch x head, query) rows,
    with a hand-written backward. Why, measured on the 2-core CPU in bf16 at the decoders' 1568
    tokens: (1) autograd allocates four (N x N) buffers per head per call (scores, probabilities,
    their gradients); here the softmax overwrites the scores it reads and the softmax gradient
    overwrites the probability gradient, two buffers; (2) a tile of one head's scores (~5 MB) stays
    in cache between the matmul that writes it and the softmax that reads it, and comes from the
    allocator's heap instead of a fresh 30-60 MB mapping whose pages fault in on first touch.
    Forward + backward ran 1.25-1.45x faster than the plain matmul-softmax-matmul graph (ViT-S/B
    decoder shapes). The in-place kernels are checked bit-exact against the out-of-place ones on the
    CPU only, so other devices take the out-of-place ops (same results)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shape, k_shape, v_shape = q.shape, k.shape, v.shape
        scale = shape[-1] ** -0.5
        in_place = q.device.type == "cpu"
        # (batch x heads, N, d), contiguous: the inputs are usually permuted views of one qkv GEMM
        q_scaled = (q * scale).reshape(-1, shape[-2], shape[-1])
        k = k.reshape(-1, *k.shape[-2:])
        v = v.reshape(-1, *v.shape[-2:])
        out = q_scaled.new_empty(*q_scaled.shape[:2], v.shape[-1])
        probs = []
        for h, i in _attention_tiles(q_scaled.shape[0], shape[-2], k_shape[-2]):
            scores = torch.bmm(q_scaled[h, i], k[h].transpose(1, 2))
            if in_place:
                p = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            else:
                p = torch._softmax(scores, -1, False)
            torch.bmm(p, v[h], out=out[h, i])
            probs.append(p)
        ctx.save_for_backward(q_scaled, k, v, *probs)
        ctx.scale, ctx.shapes = scale, (shape, k_shape, v_shape)
        return out.view(*shape[:-1], v_shape[-1])

    @staticmethod
    @once_differentiable  # the backward's in-place kernels are not themselves differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q_scaled, k, v, *probs = ctx.saved_tensors
        shape, k_shape, v_shape = ctx.shapes
        grad_out = grad_out.reshape(*q_scaled.shape[:2], v.shape[-1])
        in_place = grad_out.device.type == "cpu"
        grad_q = torch.empty_like(q_scaled)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        for (h, i), p in zip(_attention_tiles(q_scaled.shape[0], shape[-2], k_shape[-2]), probs):
            g = grad_out[h, i]
            grad_v[h].baddbmm_(p.transpose(1, 2), g)
            grad_p = torch.bmm(g, v[h].transpose(1, 2))
            if in_place:
                grad_s = torch.ops.aten._softmax_backward_data.out(grad_p, p, -1, p.dtype, grad_input=grad_p)
            else:
                grad_s = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
            torch.bmm(grad_s, k[h], out=grad_q[h, i])
            grad_k[h].baddbmm_(grad_s.transpose(1, 2), q_scaled[h, i])
        grad_q.mul_(ctx.scale)
        return grad_q.view(shape), grad_k.view(k_shape), grad_v.view(v_shape)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as plain matmuls; (B, H, N, d) in and out."""
    return _MatmulAttention.apply(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal attention over (B, H, N, d). "auto" keeps SDPA (flash / memory-efficient kernels)
    everywhere except bf16 on the CPU: there the fused kernel ran forward + backward at 1568
    tokens about 1.4x slower than bf16 matmuls + softmax (bench/model_step.py, docs/BENCHMARKS.md),
    while in fp32 the fused kernel wins."""
    backend = _attention_backend
    if backend == "auto":
        backend = "matmul" if q.device.type == "cpu" and q.dtype == torch.bfloat16 else "sdpa"
    if backend == "matmul":
        return matmul_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


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
        if videos.device.type != "cpu":
            return self.proj(videos).flatten(2).transpose(1, 2)
        # A stride-equals-kernel Conv3d is one GEMM over the cubes; on the CPU the oneDNN Conv3d
        # (its weight gradient above all) ran several times slower than the same GEMM.
        b, c, t, h, w = videos.shape
        (tt, ph, pw), (gt, gh, gw) = self.proj.kernel_size, self.grid
        cubes = videos.reshape(b, c, gt, tt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        cubes = cubes.reshape(b, self.num_tokens, c * tt * ph * pw)
        return F.linear(cubes, self.proj.weight.flatten(1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention; qkv has no bias tensor of its own but q_bias/v_bias (k gets none),
    the parameter layout of VideoMAE checkpoints."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 at the first block to `rate` at the last."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


class BlockStack(nn.Module):
    """Mixin for modules with `self.blocks`: runs them, each optionally under activation checkpointing."""

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = bool(enabled)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # Non-reentrant: works with shared weights, kwargs-free blocks and ZeRO's grad hooks;
        # the default preserve_rng_state keeps DropPath's draw identical in the recompute.
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if use_ckpt else blk(x)
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
