"""MotionMAE models in plain PyTorch: the pretraining model, the finetuning classifier and its linear
probe, mask generators, the size registry and an analytic FLOP counter."""
from motionmae_ds.models.classifier import PROBE_NORMS, LinearProbe, VideoClassifier, build_classifier
from motionmae_ds.models.flops import classifier_macs, pretrain_macs
from motionmae_ds.models.masking import (
    MASK_KINDS,
    MaskGenerator,
    RunningCellDecoderMask,
    build_decoder_mask,
    build_mask_generator,
)
from motionmae_ds.models.motionmae import MotionMAE, build_pretrain_model
from motionmae_ds.models.registry import MODEL_SIZES, ModelSize, resolve_size
from motionmae_ds.models.validation import ModelConfigError

__all__ = [
    "LinearProbe", "MASK_KINDS", "MODEL_SIZES", "MaskGenerator", "ModelConfigError", "ModelSize", "MotionMAE",
    "PROBE_NORMS", "RunningCellDecoderMask", "VideoClassifier", "build_classifier", "build_decoder_mask",
    "build_mask_generator", "build_pretrain_model",
    "classifier_macs", "pretrain_macs", "resolve_size",
]
