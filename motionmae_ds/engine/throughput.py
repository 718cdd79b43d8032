"""Training TFLOP/s per device from the model's analytic MAC count, and MFU on devices with a known peak."""
from __future__ import annotations

from typing import Optional

from motionmae_ds.config import ExperimentConfig
from motionmae_ds.engine.builders import model_kwargs
from motionmae_ds.engine.mfu import accelerator_device_name, mfu
from motionmae_ds.models.flops import pretrain_macs

# forward + backward (twice the forward) = 3 passes; one multiply-accumulate = 2 FLOPs. Model FLOPs, the
# MFU convention: the recompute of activation checkpointing is not counted as useful work.
TRAIN_FLOPS_PER_MAC = 6


class FlopCounter:
    def __init__(self, cfg: ExperimentConfig) -> None:
        macs = pretrain_macs(mask_ratio=cfg.masking.ratio, mask_kind=cfg.masking.kind, **model_kwargs(cfg))
        self.flops_per_sample = TRAIN_FLOPS_PER_MAC * float(macs)
        self.device_name = accelerator_device_name()

    def tflops_per_device(self, samples_per_s_per_device: float) -> float:
        return self.flops_per_sample * samples_per_s_per_device / 1e12

    def mfu(self, samples_per_s_per_device: float) -> Optional[float]:
        """Fraction of the device's bf16 peak; None on the CPU and on devices the peak table does not know."""
        return mfu(self.flops_per_sample * samples_per_s_per_device, self.device_name)
