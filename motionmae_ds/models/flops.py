"""Analytic forward multiply-accumulate counts (fvcore's convention, the paper's "FLOPs"): linear
layers, the patch convolution and the two attention matmuls; norms, activations, softmax and
elementwise ops are not counted. Training FLOPs per sample are about 3 x 2 x these MACs."""
from __future__ import annotations

import inspect
from typing import Any

from motionmae_ds.models.classifier import CLASSIFIER_KWARGS, build_classifier
from motionmae_ds.models.masking import CELL_PLACES, build_decoder_mask, build_mask_generator
from motionmae_ds.models.motionmae import PRETRAIN_KWARGS, build_pretrain_model
from motionmae_ds.models.registry import resolve_size
from motionmae_ds.models.validation import check_divides, reject_unknown

MLP_RATIO = 4
# forward + backward (twice the forward) = 3 passes; one multiply-accumulate = 2 FLOPs. Model FLOPs, the
# MFU convention: the recompute of activation checkpointing is not counted as useful work.
TRAIN_FLOPS_PER_MAC = 6
# a linear probe runs the frozen encoder forward only (its head's backward is negligible)
PROBE_FLOPS_PER_MAC = 2
FLOPS_PER_MAC = 2


def block_macs(tokens: int, dim: int) -> int:
    """One transformer block on `tokens` tokens: qkv + proj (4 d^2 per token), MLP (2 * 4 d^2 per
    token), q @ k^T and attn @ v (n^2 d each)."""
    linear = tokens * (4 * dim * dim + 2 * dim * MLP_RATIO * dim)
    return linear + 2 * tokens * tokens * dim


def _bound(builder, known, func_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The builder's arguments with its defaults filled in, so counts match what it builds."""
    reject_unknown(func_name, {k: v for k, v in kwargs.items() if k not in known}, known)
    bound = inspect.signature(builder).bind(**kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("unknown", None)
    check_divides("num_frames", args["num_frames"], "tubelet_size", args["tubelet_size"])
    check_divides("img_size", args["img_size"], "patch_size", args["patch_size"])
    return args


def _embed_macs(args: dict[str, Any], dim: int) -> tuple[int, int]:
    """(tokens, MACs of the tubelet Conv3d over every token)."""
    patch_dim = args["in_chans"] * args["tubelet_size"] * args["patch_size"] ** 2
    tokens = (args["num_frames"] // args["tubelet_size"]) * (args["img_size"] // args["patch_size"]) ** 2
    return tokens, tokens * patch_dim * dim


def classifier_macs(**model_kwargs: Any) -> int:
    """Forward MACs of one clip through `build_classifier(**model_kwargs)`."""
    args = _bound(build_classifier, CLASSIFIER_KWARGS, "classifier_macs", model_kwargs)
    size = resolve_size(args["name"], args["embed_dim"], args["depth"], args["num_heads"])
    tokens, embed = _embed_macs(args, size.embed_dim)
    return embed + size.depth * block_macs(tokens, size.embed_dim) + size.embed_dim * args["num_classes"]


def attentive_probe_step_macs(num_queries: int = 1, mlp_ratio: float = MLP_RATIO, **model_kwargs: Any) -> int:
    """Multiply-accumulates of one training clip of ``AttentiveProbe(build_classifier(**model_kwargs))``, forward
    and backward (models/attentive.py): the frozen encoder forward only (no backward, no gradients); the pooler's
    ``num_queries`` queries (q, the two attention matmuls over the N tokens, proj, MLP) and the linear head forward
    and backward (twice the forward: the key/value projection's input gradient too, since the tokens it reads
    pass through the pooler's own trained norm)."""
    args = _bound(build_classifier, CLASSIFIER_KWARGS, "attentive_probe_step_macs", model_kwargs)
    size = resolve_size(args["name"], args["embed_dim"], args["depth"], args["num_heads"])
    tokens, embed = _embed_macs(args, size.embed_dim)
    d, q = size.embed_dim, num_queries
    encoder = embed + size.depth * block_macs(tokens, d)
    kv = tokens * d * 2 * d
    pooler = q * d * d + kv + 2 * q * tokens * d + q * d * d + 2 * q * d * int(d * mlp_ratio)
    head = d * args["num_classes"]
    return encoder + 3 * (pooler + head)


def pretrain_macs(mask_ratio: float, mask_kind: str = "random", decoder_ratio: float = 0.0,
                  decoder_heads: str = "shared", **model_kwargs: Any) -> int:
    """Forward MACs of one clip through `build_pretrain_model(**model_kwargs)` with the masks of
    `build_mask_generator(mask_kind, grid, mask_ratio)`: embedding of all tokens, encoder on the
    visible ones, per decoder the visible-token projection and blocks over the tokens it runs on, and the
    prediction layers on the masked tokens it reconstructs.

    A decoder runs on every token, or with decoder masking (`decoder_ratio` > 0, build_decoder_mask) on the
    visible tokens and the masked tokens its running cell keeps: (1 - decoder_ratio) of them, exact for tube
    masks over a multiple of four slices and the expectation otherwise. The padding a batch adds when its
    samples keep different counts is overhead, not counted (as activation recompute is not)."""
    args = _bound(build_pretrain_model, PRETRAIN_KWARGS, "pretrain_macs", model_kwargs)
    size = resolve_size(args["name"], args["embed_dim"], args["depth"], args["num_heads"],
                        args["decoder_embed_dim"], args["decoder_depth"], args["decoder_num_heads"])
    tokens, embed = _embed_macs(args, size.embed_dim)
    grid = (args["num_frames"] // args["tubelet_size"], args["img_size"] // args["patch_size"],
            args["img_size"] // args["patch_size"])
    gen = build_mask_generator(mask_kind, grid, mask_ratio)
    visible, masked = gen.num_visible, gen.num_masked
    decoder_mask = build_decoder_mask(grid=grid, ratio=decoder_ratio, heads=decoder_heads)
    if decoder_mask is not None:
        masked = masked * decoder_mask.keep / CELL_PLACES  # decoded (and supervised) masked tokens per head
    patch_dim = args["in_chans"] * args["tubelet_size"] * args["patch_size"] ** 2
    num_targets = 1 if args["target"] in ("frame", "motion") else 2
    num_decoders = num_targets if args["decoder_mode"] == "divide" else 1
    dec = size.decoder_embed_dim
    one_decoder = visible * size.embed_dim * dec + size.decoder_depth * block_macs(visible + masked, dec)
    return round(embed + size.depth * block_macs(visible, size.embed_dim) + num_decoders * one_decoder
                 + num_targets * masked * dec * patch_dim)
