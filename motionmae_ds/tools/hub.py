"""What ``hubconf.py`` hands to ``torch.hub.load``: the pretraining model, its encoder and the finetuning classifier
at a paper size (S/B/L/H), optionally with weights from a local path or a URL.

A checkpoint that carries its run's settings (a DeepSpeed run or checkpoint directory, a converted file, an HF
directory) decides the model's shape; ``size`` and keyword arguments may only agree with it or add to what it does
not fix (a classifier's dropout, a model's grad checkpointing).
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Optional

import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.models import MODEL_SIZES, build_classifier, build_pretrain_model
from motionmae_ds.models.vit import VisionTransformerEncoder, init_vit_weights
from motionmae_ds.tools.convert import pretraining_kwargs

SIZES = {"S": "vit_small", "B": "vit_base", "L": "vit_large", "H": "vit_huge"}
_ENCODER_KEYS = ("name", "num_frames", "img_size", "patch_size", "tubelet_size", "in_chans", "embed_dim", "depth",
                 "num_heads", "pos_embed")


def model_name(size: Optional[str]) -> Optional[str]:
    """"S"/"small"/"vit_small" (any case) -> "vit_small"; None stays None."""
    if size is None:
        return None
    key = str(size).lower().removeprefix("vit_")
    for letter, name in SIZES.items():
        if key in (letter.lower(), name.removeprefix("vit_")):
            return name
    if f"vit_{key}" in MODEL_SIZES:  # vit_tiny: tests and smoke runs
        return f"vit_{key}"
    raise ValueError(f"size={size!r}: choose one of {', '.join(SIZES)} (or {', '.join(SIZES.values())})")


def local_path(checkpoint: str | Path) -> Path:
    """A local path as it is; a URL (http, https, file) downloaded once into torch.hub's checkpoint directory."""
    text = str(checkpoint)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme not in ("http", "https", "file"):
        return Path(checkpoint)
    name = Path(urllib.parse.urlparse(text).path).name or "checkpoint"
    target = Path(torch.hub.get_dir()) / "checkpoints" / "motionmae_ds" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(text, str(target), progress=False)
    return target


def _merge(fixed: dict[str, Any], size: Optional[str], kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint's settings ``fixed`` with the caller's: a caller's value that contradicts one is an error."""
    wanted = dict(kwargs)
    if size is not None:
        wanted["name"] = model_name(size)
    clash = [f"{k}={v!r} (the checkpoint has {fixed[k]!r})" for k, v in wanted.items() if k in fixed and fixed[k] != v]
    if clash:
        raise ValueError(f"{where}: {', '.join(clash)}")
    return {**fixed, **wanted}


def pretraining_model(size: Optional[str] = None, checkpoint: Optional[str | Path] = None, **kwargs: Any
                      ) -> torch.nn.Module:
    """The MotionMAE pretraining model (encoder, space head, time head); with ``checkpoint``, its weights."""
    if checkpoint is None:
        return build_pretrain_model(name=model_name(size) or "vit_base", **kwargs)
    path = local_path(checkpoint)
    if (path / ckpt.hf.HF_CONFIG).is_file() and (path / ckpt.hf_pretraining.MOTIONMAE_CONFIG).is_file():
        state, fixed = ckpt.hf_pretraining.load_hf_pretraining(path)
    else:
        state, info = ckpt.read_weights(path)
        fixed = pretraining_kwargs(info) if info["config"] is not None and info["kind"] != "hf" else {}
    model = build_pretrain_model(**_merge(fixed, size, kwargs, str(checkpoint)))
    if any(k.startswith("encoder.") for k in state) and any(k.startswith(ckpt.DECODER_PREFIXES) for k in state):
        model.load_state_dict(state, strict=True)  # a whole pretraining model
    else:  # encoder weights only (an encoder export, an HF encoder): the decoders stay freshly initialised
        ckpt.load_into(model, path, "continue_pretraining")
    return model


def encoder(size: Optional[str] = None, checkpoint: Optional[str | Path] = None, **kwargs: Any
            ) -> VisionTransformerEncoder:
    """The video ViT encoder with its final norm (what frozen evaluations use); with ``checkpoint``, its weights
    from a pretraining or finetuning source."""
    fixed: dict[str, Any] = {}
    if checkpoint is not None:
        checkpoint = local_path(checkpoint)
        _, info = ckpt.read_weights(checkpoint)
        if info["model_kwargs"] is not None:
            fixed = {k: v for k, v in ckpt.hf.encoder_kwargs(info["model_kwargs"]).items() if k in _ENCODER_KEYS}
    unknown = sorted(set(kwargs) - set(_ENCODER_KEYS))
    if unknown:
        raise ValueError(f"encoder: unknown argument(s) {', '.join(unknown)}; known: {', '.join(_ENCODER_KEYS)}")
    kw = _merge(fixed, size, kwargs, str(checkpoint))
    kw.setdefault("name", "vit_base")
    full = ckpt.hf.encoder_kwargs(kw)
    model = VisionTransformerEncoder(full["num_frames"], full["img_size"], full["patch_size"], full["tubelet_size"],
                                     full["in_chans"], full["embed_dim"], full["depth"], full["num_heads"],
                                     pos_embed=full["pos_embed"])
    model.apply(init_vit_weights)
    if checkpoint is not None:
        ckpt.load_into(model, checkpoint, "frozen_encoder")
    return model.eval()


def classifier(size: Optional[str] = None, num_classes: Optional[int] = None,
               checkpoint: Optional[str | Path] = None, **kwargs: Any) -> torch.nn.Module:
    """The finetuning classifier; with a finetuned ``checkpoint`` the whole model (its class count), with a
    pretraining one the encoder and a fresh head of ``num_classes``."""
    fixed: dict[str, Any] = {}
    state: dict[str, torch.Tensor] = {}
    if checkpoint is not None:
        checkpoint = local_path(checkpoint)
        state, info = ckpt.read_weights(checkpoint)
        if info["model_kwargs"] is not None:
            fixed = {k: v for k, v in ckpt.hf.encoder_kwargs(info["model_kwargs"]).items() if k in _ENCODER_KEYS}
    head = state.get("head.weight")
    if head is not None:
        fixed["num_classes"] = int(head.shape[0])
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kw = _merge(fixed, size, kwargs, str(checkpoint))
    kw.setdefault("name", "vit_base")
    if "num_classes" not in kw:
        raise ValueError("num_classes is needed for a classifier without a finetuned checkpoint")
    model = build_classifier(**kw)
    if checkpoint is not None:
        ckpt.load_into(model, checkpoint, "evaluate" if head is not None else "finetune")
    return model
