"""Training TFLOP/s per device from the model's analytic MAC count, and MFU on devices with a known peak."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from motionmae_ds.builders import classifier_kwargs, mask_kwargs, model_kwargs
from motionmae_ds.config import PretrainConfig
from motionmae_ds.models.flops import (
    FLOPS_PER_MAC,
    PROBE_FLOPS_PER_MAC,
    TRAIN_FLOPS_PER_MAC,
    attentive_probe_step_macs,
    classifier_macs,
    pretrain_macs,
)
from motionmae_ds.train.mfu import accelerator_device_name, mfu

if TYPE_CHECKING:
    from motionmae_ds.config import FinetuneConfig



def finetune_flops_per_sample(cfg: "FinetuneConfig") -> float:
    """Model FLOPs of one training clip of a finetuning (6 x MACs) or linear-probe (2 x MACs) run, or of an
    attentive probe's step (the frozen encoder forward, the pooler and head forward and backward)."""
    if cfg.finetune.probe == "attentive":
        return FLOPS_PER_MAC * float(attentive_probe_step_macs(cfg.finetune.probe_queries, **classifier_kwargs(cfg)))
    macs = classifier_macs(**classifier_kwargs(cfg))
    return (PROBE_FLOPS_PER_MAC if cfg.finetune.linear_probe else TRAIN_FLOPS_PER_MAC) * float(macs)


class FlopCounter:
    """Pretraining counter for a ``PretrainConfig``; ``FlopCounter.finetuning(cfg)`` for a ``FinetuneConfig``."""

    def __init__(self, cfg: Optional[PretrainConfig], flops_per_sample: Optional[float] = None) -> None:
        if flops_per_sample is None:
            macs = pretrain_macs(**mask_kwargs(cfg), **model_kwargs(cfg))
            flops_per_sample = TRAIN_FLOPS_PER_MAC * float(macs)
        self.flops_per_sample = float(flops_per_sample)
        self.device_name = accelerator_device_name()

    @classmethod
    def finetuning(cls, cfg: "FinetuneConfig") -> "FlopCounter":
        return cls(None, finetune_flops_per_sample(cfg))

    def tflops_per_device(self, samples_per_s_per_device: float) -> float:
        return self.flops_per_sample * samples_per_s_per_device / 1e12

    def mfu(self, samples_per_s_per_device: float) -> Optional[float]:
        """Fraction of the device's bf16 peak; None on the CPU and on devices the peak table does not know."""
        return mfu(self.flops_per_sample * samples_per_s_per_device, self.device_name)
