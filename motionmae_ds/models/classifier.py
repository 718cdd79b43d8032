"""The finetuning classifier: the pretraining encoder on all tokens, mean pooling, fc_norm, head, and the
linear probe around it. Parameter names follow VideoMAE's finetune model (patch_embed, blocks.{i},
fc_norm, head)."""
from __future__ import annotations

import inspect
from typing import Optional

import torch
import torch.nn as nn

from motionmae_ds.models.registry import resolve_size
from motionmae_ds.models.validation import check_fraction, check_positive_int, reject_unknown
from motionmae_ds.models.vit import LAYER_NORM_EPS, VisionTransformerEncoder, init_vit_weights

# The linear probe's normalisation of the pooled features: MAE's BatchNorm, or a LayerNorm.
PROBE_NORMS = ("batchnorm", "layernorm")


class VideoClassifier(VisionTransformerEncoder):
    """Build through `build_classifier`. `forward(videos)` -> logits (B, num_classes)."""

    def __init__(self, *, num_classes: int, num_frames: int, img_size: int, patch_size: int,
                 tubelet_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 pos_embed: str, drop_path_rate: float, head_dropout: float, init_scale: float,
                 grad_checkpointing: bool) -> None:
        # Mean pooling replaces the final norm: fc_norm normalises the pooled vector instead.
        super().__init__(num_frames, img_size, patch_size, tubelet_size, in_chans, embed_dim, depth, num_heads,
                         drop_path_rate=drop_path_rate, pos_embed=pos_embed, final_norm=False,
                         grad_checkpointing=grad_checkpointing)
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(init_vit_weights)
        # A near-zero head starts finetuning from uniform logits, so the pretrained encoder is not
        # shaken by large early gradients.
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.trunc_normal_(self.head.bias, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
            self.head.bias.mul_(init_scale)

    def forward_features(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, D) mean of the token features, after fc_norm."""
        x = super().forward(videos)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(videos)))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's `param_groups_layer_decay`: the embedding, then each block, and
        fc_norm + head (unmatched) together last, the layer ids VideoMAE's finetuning assigns."""
        return {"stem": r"^patch_embed", "blocks": r"^blocks\.(\d+)"}

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def layer_id(self, param_name: str) -> int:
        """Depth index for layer-wise lr decay: 0 for the embedding, i + 1 for block i, and
        num_layers + 1 for fc_norm and head."""
        if param_name.startswith("patch_embed"):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return len(self.blocks) + 1


def build_classifier(
    name: str = "vit_base", num_classes: int = 174, num_frames: int = 16, img_size: int = 224,
    patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3,
    embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None,
    pos_embed: str = "sincos_1d", drop_path_rate: float = 0.1, head_dropout: float = 0.0,
    init_scale: float = 0.001, grad_checkpointing: bool = False, **unknown,
) -> VideoClassifier:
    """The finetuning classifier of registry size `name` (decoder sizes do not apply)."""
    reject_unknown("build_classifier", unknown, CLASSIFIER_KWARGS)
    for key, value in (("num_classes", num_classes), ("num_frames", num_frames), ("img_size", img_size),
                       ("patch_size", patch_size), ("tubelet_size", tubelet_size), ("in_chans", in_chans)):
        check_positive_int(key, value)
    check_fraction("drop_path_rate", drop_path_rate, low_open=False, high_open=True)
    check_fraction("head_dropout", head_dropout, low_open=False, high_open=True)
    size = resolve_size(name, embed_dim, depth, num_heads)
    return VideoClassifier(
        num_classes=num_classes, num_frames=num_frames, img_size=img_size, patch_size=patch_size,
        tubelet_size=tubelet_size, in_chans=in_chans, embed_dim=size.embed_dim, depth=size.depth,
        num_heads=size.num_heads, pos_embed=pos_embed, drop_path_rate=drop_path_rate,
        head_dropout=head_dropout, init_scale=init_scale, grad_checkpointing=grad_checkpointing)


CLASSIFIER_KWARGS = tuple(p for p in inspect.signature(build_classifier).parameters if p != "unknown")


class LinearProbe(nn.Module):
    """A frozen encoder (always in eval mode) whose mean-pooled tokens go through a normalisation without
    affine parameters (BatchNorm1d as MAE's probe, or LayerNorm) into the classifier's linear head."""

    def __init__(self, backbone: VideoClassifier, norm: str = "batchnorm") -> None:
        super().__init__()
        if norm not in PROBE_NORMS:
            raise ValueError(f"probe norm={norm!r} is not one of {', '.join(PROBE_NORMS)}")
        self.backbone = backbone
        dim = backbone.embed_dim
        self.probe_norm = (nn.BatchNorm1d(dim, affine=False, eps=1e-6) if norm == "batchnorm"
                           else nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False))
        for name, p in backbone.named_parameters():
            p.requires_grad = name.startswith("head.")

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # features as at test time: no drop path, no dropout
        return self

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # the encoder's tokens, skipping the classifier's own fc_norm (a fresh, untrained layer)
            feats = VisionTransformerEncoder.forward(self.backbone, videos).mean(dim=1)
        return self.backbone.head(self.probe_norm(feats))
