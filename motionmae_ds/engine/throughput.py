"""Training TFLOP/s per device from the model's analytic MAC count."""
from __future__ import annotations

from typing import Any, Optional

from motionmae_ds.config import ExperimentConfig

# forward + backward (twice the forward) = 3 passes; one multiply-accumulate = 2 FLOPs
TRAIN_FLOPS_PER_MAC = 6


class FlopCounter:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.flops_per_sample: Optional[float] = None
        try:
            from motionmae_ds.engine.builders import model_kwargs
            from motionmae_ds.models.flops import pretrain_macs

            macs = pretrain_macs(mask_ratio=cfg.masking.ratio, mask_kind=cfg.masking.kind, **model_kwargs(cfg))
            self.flops_per_sample = TRAIN_FLOPS_PER_MAC * float(macs)
        except (ImportError, TypeError, ValueError):
            # an older models package without the counter: log null rather than stop training
            self.flops_per_sample = None

    def tflops_per_device(self, samples_per_s_per_device: float) -> Optional[float]:
        if self.flops_per_sample is None:
            return None
        return self.flops_per_sample * samples_per_s_per_device / 1e12
