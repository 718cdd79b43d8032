"""torch.hub entry points of motionmae_ds (the code behind them: motionmae_ds/tools/hub.py).

    import torch
    model = torch.hub.load("OWNER/motionmae_ds", "motionmae_pretraining", size="B")         # from GitHub
    enc = torch.hub.load("/path/to/motionmae_ds", "motionmae_encoder", source="local",
                         checkpoint="runs/pretrain_vitb/checkpoints")                      # a local checkout
    clf = torch.hub.load("/path/to/motionmae_ds", "motionmae_classifier", source="local",
                         checkpoint="https://example.org/vitb_ssv2_finetuned.pth")

``size`` is one of S, B, L, H; ``checkpoint`` a local path (a DeepSpeed run or checkpoint directory, a converted
weight file, an HF VideoMAE directory) or a URL, downloaded once into torch.hub's directory. A checkpoint that
carries its settings decides the model's shape. See docs/CHECKPOINTS.md.
"""
from motionmae_ds.tools import hub as _hub

dependencies = ["torch", "timm", "einops", "safetensors", "deepspeed"]


def motionmae_pretraining(size=None, checkpoint=None, **kwargs):
    """MotionMAE's pretraining model (encoder, space head, time head), randomly initialised or from ``checkpoint``."""
    return _hub.pretraining_model(size, checkpoint, **kwargs)


def motionmae_encoder(size=None, checkpoint=None, **kwargs):
    """The video ViT encoder with its final norm, in eval mode: frozen features, k-NN, probes."""
    return _hub.encoder(size, checkpoint, **kwargs)


def motionmae_classifier(size=None, num_classes=None, checkpoint=None, **kwargs):
    """The finetuning classifier: a finetuned ``checkpoint`` whole, or a pretraining one's encoder + a new head."""
    return _hub.classifier(size, num_classes, checkpoint, **kwargs)
