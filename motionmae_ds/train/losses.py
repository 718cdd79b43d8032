"""The finetuning losses beside plain cross-entropy: label smoothing (hard labels) and soft targets (mixup/cutmix
mixes the labels), each averaged over the batch; the formulas of timm's ``LabelSmoothingCrossEntropy`` and
``SoftTargetCrossEntropy`` (tests/train/test_losses_ema.py checks them against timm's), without importing timm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelSmoothingCrossEntropy(nn.Module):
    """``(1 - s) * NLL(target) + s * mean over classes of -log p``, averaged over the batch."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing {smoothing} must be in [0, 1)")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logprobs = F.log_softmax(logits, dim=-1)
        nll = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
        smooth = -logprobs.mean(dim=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


class SoftTargetCrossEntropy(nn.Module):
    """``sum over classes of -target * log p``, averaged over the batch; ``target`` (B, classes) sums to 1."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
