"""Model sizes of the MotionMAE paper (encoder and decoder widths) and their override rules."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from motionmae_ds.models.validation import ModelConfigError, check_positive_int


@dataclass(frozen=True)
class ModelSize:
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int


MODEL_SIZES: dict[str, ModelSize] = {
    # vit_tiny exists for tests and smoke runs; the others are MOTIONMAE.md's table.
    "vit_tiny": ModelSize(192, 12, 3, 96, 4, 3),
    "vit_small": ModelSize(384, 12, 6, 192, 4, 3),
    "vit_base": ModelSize(768, 12, 12, 384, 4, 6),
    "vit_large": ModelSize(1024, 24, 16, 512, 4, 8),
    "vit_huge": ModelSize(1280, 32, 16, 640, 4, 8),
}


def resolve_size(
    name: str,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    decoder_embed_dim: Optional[int] = None,
    decoder_depth: Optional[int] = None,
    decoder_num_heads: Optional[int] = None,
) -> ModelSize:
    """The registry entry `name` with every non-None override applied and checked."""
    if name not in MODEL_SIZES:
        raise ModelConfigError(f"unknown model name {name!r}; known: {', '.join(MODEL_SIZES)}")
    overrides = {
        "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
        "decoder_embed_dim": decoder_embed_dim, "decoder_depth": decoder_depth,
        "decoder_num_heads": decoder_num_heads,
    }
    size = replace(MODEL_SIZES[name], **{k: v for k, v in overrides.items() if v is not None})
    for key, value in vars(size).items():
        check_positive_int(key, value)
    for dim_key, heads_key in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        dim, heads = getattr(size, dim_key), getattr(size, heads_key)
        if dim % heads != 0:
            raise ModelConfigError(f"{heads_key}={heads} does not divide {dim_key}={dim}")
    return size
