"""CPU-only speed paths of the ViT: attention as tiled matmuls and a softmax with a hand-written
backward, and the tubelet embedding as one GEMM. Each computes exactly what the plain torch op it
stands for computes (`F.scaled_dot_product_attention`, `nn.Conv3d`), faster than that op on a CPU
(each docstring says by how much; bench/model_step.py measures it). The model modules pick them per
call by device and dtype (models/vit.py); nothing here holds state."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Score elements per tile of `matmul_attention` (8 MiB in bf16): small enough to stay in cache and in
# the allocator's reused heap, large enough that each GEMM is big.
ATTENTION_TILE_ELEMENTS = 1 << 22


def attention_tiles(heads: int, n: int, n_keys: int, budget: Optional[int] = None) -> list[tuple[slice, slice]]:
    """(head slice, query slice) pairs covering (heads, n) query rows, each tile's scores <= budget
    elements where possible: whole heads (n x n_keys scores each) grouped while they fit, else one
    head's queries in chunks. Either way a tile's rows are contiguous in a (heads, n, d) tensor."""
    # Read at call time, not bound as a default, so tests can shrink the budget to force tiling.
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
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        shape, k_shape, v_shape = q.shape, k.shape, v.shape
        scale = shape[-1] ** -0.5
        in_place = q.device.type == "cpu"
        # (batch x heads, N, d), contiguous: the inputs are usually permuted views of one qkv GEMM
        q_scaled = (q * scale).reshape(-1, shape[-2], shape[-1])
        k = k.reshape(-1, *k.shape[-2:])
        v = v.reshape(-1, *v.shape[-2:])
        out = q_scaled.new_empty(*q_scaled.shape[:2], v.shape[-1])
        probs = []
        for h, i in attention_tiles(q_scaled.shape[0], shape[-2], k_shape[-2]):
            scores = torch.bmm(q_scaled[h, i], k[h].transpose(1, 2))
            if key_bias is not None:  # -inf at padding keys: their probabilities, and so their gradients, are 0
                scores = scores.add_(key_bias[h]) if in_place else scores + key_bias[h]
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
        for (h, i), p in zip(attention_tiles(q_scaled.shape[0], shape[-2], k_shape[-2]), probs):
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
        return grad_q.view(shape), grad_k.view(k_shape), grad_v.view(v_shape), None


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as plain matmuls; (B, H, N, d) in and out. `key_mask` (B, N_keys) bool,
    False = a key no query attends to (SDPA's boolean attn_mask broadcast over heads and queries)."""
    key_bias = None
    if key_mask is not None:
        b, heads = q.shape[0], q.shape[1]
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        bias = torch.where(key_mask, zero, torch.tensor(float("-inf"), dtype=q.dtype, device=q.device))
        key_bias = bias[:, None, None, :].expand(b, heads, 1, key_mask.shape[-1]).reshape(b * heads, 1, -1)
    return _MatmulAttention.apply(q, k, v, key_bias)


def prefers_matmul_attention(q: torch.Tensor) -> bool:
    """The "auto" rule: bf16 on the CPU only. There bf16 matmuls + softmax run forward + backward at
    1568 tokens about 1.4x faster than the fused SDPA kernel (bench/model_step.py,
    docs/notes/model-step-speed.md), while in fp32, and on accelerators, the fused kernel wins."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def gemm_tubelet_embed(videos: torch.Tensor, proj: nn.Conv3d) -> torch.Tensor:
    """`proj(videos).flatten(2).transpose(1, 2)` for a stride-equals-kernel Conv3d, computed as one
    GEMM over the cubes: (B, C, T, H, W) -> (B, tokens, D), tokens in (t h w) order. On the CPU this
    GEMM is several times faster than oneDNN's Conv3d, whose weight gradient above all is slow."""
    b, c, t, h, w = videos.shape
    tt, ph, pw = proj.kernel_size
    gt, gh, gw = t // tt, h // ph, w // pw
    # Each cube's values in the Conv3d weight's (c, tt, ph, pw) order. Plain reshape/permute, not
    # einops as in targets.py: the same copy, without einops' ~11 us of pattern handling per call.
    cubes = videos.reshape(b, c, gt, tt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    cubes = cubes.reshape(b, gt * gh * gw, c * tt * ph * pw)
    return F.linear(cubes, proj.weight.flatten(1), proj.bias)
