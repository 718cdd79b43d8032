"""Mixup and cutmix on 5-D video batches ``(B, C, T, H, W)``, with soft targets.

Why not timm's ``Mixup``: it cuts its box on dims 2 and 3, which for a video batch are time and height, and
draws from numpy's global RNG. Here the cutmix box spans H x W and is the same for every frame (a box that
moved between frames would let the model copy the hidden region from a neighbour), and every draw comes from
a generator the trainer seeds from (seed, epoch, micro-step, rank), like the rest of the run.

Batch mode, as in the recipes: one lambda per batch, each clip mixed with the clip at the mirrored batch
position (``x.flip(0)``). Targets: label-smoothed one-hot vectors mixed with the same lambda, each row sums
to 1; train with ``timm.loss.SoftTargetCrossEntropy``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

Box = tuple[int, int, int, int]  # (top, bottom, left, right), half-open


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Rows with ``1 - smoothing + smoothing / C`` on the label and ``smoothing / C`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long()[:, None], 1.0 - smoothing + off)


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float) -> torch.Tensor:
    y = smooth_one_hot(labels, num_classes, smoothing)
    return lam * y + (1.0 - lam) * y.flip(0)


def mixup_clips(videos: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * x + (1 - lam) * x.flip(0)`` (a new tensor)."""
    return videos * lam + videos.flip(0) * (1.0 - lam)


def cutmix_clips(videos: torch.Tensor, box: Box) -> torch.Tensor:
    """Paste the mirrored clip's ``box`` (on H x W, all channels and frames) into each clip (a new tensor)."""
    top, bottom, left, right = box
    out = videos.clone()
    out[..., top:bottom, left:right] = videos.flip(0)[..., top:bottom, left:right]
    return out


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[Box, float]:
    """A box of area about ``(1 - lam)`` of the frame at a uniform centre, clipped to the frame; returns the
    box and the lambda its clipped area really gives (what the targets must use)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    area = (bottom - top) * (right - left)
    return (top, bottom, left, right), 1.0 - area / float(height * width)


class VideoMixup:
    """``mix(videos, labels, rng) -> (mixed videos, soft targets)``; ``rng`` a numpy Generator."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, label_smoothing

    def draw(self, rng: np.random.Generator) -> tuple[str, float]:
        """("none" | "mixup" | "cutmix", lambda from Beta(alpha, alpha))."""
        if rng.random() >= self.prob or (self.mixup_alpha == 0 and self.cutmix_alpha == 0):
            return "none", 1.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            kind = "cutmix" if rng.random() < self.switch_prob else "mixup"
        else:
            kind = "cutmix" if self.cutmix_alpha > 0 else "mixup"
        alpha = self.cutmix_alpha if kind == "cutmix" else self.mixup_alpha
        return kind, float(rng.beta(alpha, alpha))

    def __call__(self, videos: torch.Tensor, labels: torch.Tensor, rng: Optional[np.random.Generator] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if videos.dim() != 5:
            raise ValueError(f"VideoMixup expects (B, C, T, H, W) clips, got shape {tuple(videos.shape)}")
        if videos.shape[0] % 2:
            # an odd batch would mix its middle clip with itself, silently weakening the regulariser
            raise ValueError(f"mixup needs an even batch (clips per micro-batch), got {videos.shape[0]}")
        rng = rng if rng is not None else np.random.default_rng()
        kind, lam = self.draw(rng)
        if kind == "mixup":
            videos = mixup_clips(videos, lam)
        elif kind == "cutmix":
            box, lam = cutmix_box(videos.shape[-2], videos.shape[-1], lam, rng)
            videos = cutmix_clips(videos, box)
        return videos, mix_targets(labels, self.num_classes, lam, self.smoothing)
