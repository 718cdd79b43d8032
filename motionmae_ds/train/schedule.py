"""Per-iteration cosine schedule with linear warmup, for lr and (optionally) weight decay."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The linear scaling rule of the recipes: lr = base_lr x total_batch / 256."""
    return base_lr * total_batch / 256.0


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Value at optimizer step ``step`` (0-based).

    Warmup ramps linearly from peak/warmup_steps (not 0, so the very first update is not wasted) to peak
    at ``warmup_steps``; then a half cosine falls to ``final`` at ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """lr and weight decay for every optimizer step of a run."""

    def __init__(self, peak_lr: float, min_lr: float, weight_decay: float, weight_decay_end: float | None,
                 steps_per_epoch: int, epochs: int, warmup_epochs: int) -> None:
        self.peak_lr = peak_lr
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay if weight_decay_end is None else weight_decay_end
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = steps_per_epoch * warmup_epochs

    def lr(self, step: int) -> float:
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)

    def wd(self, step: int) -> float:
        if self.weight_decay_end == self.weight_decay:
            return self.weight_decay
        # weight decay has no warmup: it anneals over the whole run
        return cosine_with_warmup(step, self.total_steps, 0, self.weight_decay, self.weight_decay_end)
