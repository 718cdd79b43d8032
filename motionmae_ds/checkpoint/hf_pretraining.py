"""The whole pretraining model for Hugging Face: the frame branch as a ``transformers`` ``VideoMAEForPreTraining``
directory (encoder + decoder), the time head beside it, and the loader that puts our model back together.

HF's pretraining model is VideoMAE's: one decoder that reconstructs the masked frame patches, in the same token
order and the same (tubelet, row, column, channel) value order as our space head. So the encoder and the space
head (or, with ``decoder_mode: shared``, the shared decoder and its frame layer) map name for name:
``encoder_to_decoder``, ``mask_token``, ``blocks.{i}`` -> ``decoder.decoder_layers.{i}``, ``norm`` ->
``decoder.norm``, ``head`` -> ``decoder.head``. The time head has no HF counterpart; its tensors keep our names in
``motionmae_time_head.safetensors``, and ``motionmae_config.json`` holds the model's full settings, so
``load_hf_pretraining`` rebuilds the exact MotionMAE (and reads VideoMAE's own HF pretraining checkpoints as a
frame-only MotionMAE).

Settings without an HF equivalent are refused by name: a model with no frame branch (``target: motion``), any
position table but the 1-D sinusoid one, another reconstruction loss than MSE, and pixel statistics other than
ImageNet's 3 channels (HF's labels un-normalise with those). One difference stays: HF's final decoder LayerNorm
has torch's default eps (1e-5) where ours has 1e-6, which moves predictions by ~1e-6 relative for decoder
features of unit scale (what trained decoders have).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from motionmae_ds.checkpoint.hf import (
    HF_CONFIG,
    SAFETENSORS,
    blocks_from_hf,
    blocks_to_hf,
    export_directory,
    hf_config,
    hf_to_ours,
    kwargs_from_hf_config,
    ours_to_hf,
    read_hf_weights,
    read_weight_file,
)
from motionmae_ds.checkpoint.layout import CheckpointError
from motionmae_ds.models import build_pretrain_model
from motionmae_ds.models.registry import resolve_size
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

TIME_HEAD_WEIGHTS = "motionmae_time_head.safetensors"
MOTIONMAE_CONFIG = "motionmae_config.json"
_SIZE_KEYS = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def resolved_kwargs(model_kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every ``build_pretrain_model`` argument: the given ones over the defaults, sizes resolved."""
    params = inspect.signature(build_pretrain_model).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(model_kwargs) - set(defaults))
    if unknown:
        raise CheckpointError(f"{where}: not a pretraining model's settings (unknown: {', '.join(unknown)})")
    kw = {**defaults, **model_kwargs}
    size = resolve_size(kw["name"], *(kw[k] for k in _SIZE_KEYS))
    kw.update(vars(size))
    kw["mean"], kw["std"] = [float(m) for m in kw["mean"]], [float(s) for s in kw["std"]]
    return kw


def check_exportable(kw: Mapping[str, Any], where: str) -> None:
    """One line naming the first setting that HF's VideoMAEForPreTraining cannot express."""
    problems = []
    if kw["target"] == "motion":
        problems.append("model.target='motion' trains no frame branch, which is what VideoMAEForPreTraining is")
    if kw["pos_embed"] != "sincos_1d":
        problems.append(f"model.pos_embed={kw['pos_embed']!r}: HF VideoMAE only has the 1-D sinusoid table")
    if kw["loss_type"] != "mse":
        problems.append(f"model.loss_type={kw['loss_type']!r}: HF's pretraining loss is the MSE")
    if kw["in_chans"] != 3 or tuple(kw["mean"]) != IMAGENET_MEAN or tuple(kw["std"]) != IMAGENET_STD:
        problems.append(f"in_chans={kw['in_chans']}, mean={tuple(kw['mean'])}, std={tuple(kw['std'])}: HF's labels "
                        f"un-normalise with ImageNet's 3-channel mean and std")
    if problems:
        raise CheckpointError(f"{where}: cannot be written as HF VideoMAEForPreTraining: {problems[0]}")


def _frame_decoder_names(kw: Mapping[str, Any]) -> tuple[str, str]:
    """(prefix of the decoder that predicts frames, name of its frame layer)."""
    return ("space_head.", "head") if kw["decoder_mode"] == "divide" else ("decoder.", "head_frame")


def pretraining_to_hf(state: Mapping[str, torch.Tensor], kw: Mapping[str, Any], where: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(HF VideoMAEForPreTraining tensors, time-head tensors in our names) from a whole pretraining state dict."""
    src = dict(state)
    encoder = {k[len("encoder."):]: src.pop(k) for k in list(src) if k.startswith("encoder.")}
    out = {f"videomae.{k}": v for k, v in ours_to_hf(encoder, where).items()}
    dec, head = _frame_decoder_names(kw)
    missing = [n for n in (f"{dec}encoder_to_decoder.weight", f"{dec}mask_token", f"{dec}norm.weight",
                           f"{dec}{head}.weight") if n not in src]
    if missing:
        raise CheckpointError(f"{where}: no frame decoder in the weights (missing {', '.join(missing)}); a "
                              f"finetuned classifier has none: export it with --format hf")
    out["encoder_to_decoder.weight"] = src.pop(f"{dec}encoder_to_decoder.weight")
    out["mask_token"] = src.pop(f"{dec}mask_token")
    blocks_to_hf(src, f"{dec}blocks.", "decoder.decoder_layers.", out, where)
    for ours, theirs in (("norm", "norm"), (head, "head")):
        for part in ("weight", "bias"):
            out[f"decoder.{theirs}.{part}"] = src.pop(f"{dec}{ours}.{part}")
    time_head = {k: src.pop(k) for k in list(src) if k.startswith(("time_head.", "decoder.head_motion."))}
    if src:
        raise CheckpointError(f"{where}: tensors with no place in the export: {', '.join(sorted(src))}")
    return _fp32_copies(out), _fp32_copies(time_head)


def _fp32_copies(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # copies: consolidated ZeRO tensors are views of one flat buffer
    return {k: v.detach().float().contiguous().clone() for k, v in state.items()}


def pretraining_hf_config(kw: Mapping[str, Any], encoder_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    cfg = hf_config(kw, encoder_state)
    cfg.update({"architectures": ["VideoMAEForPreTraining"], "use_mean_pooling": False,
                "decoder_hidden_size": kw["decoder_embed_dim"], "decoder_num_hidden_layers": kw["decoder_depth"],
                "decoder_num_attention_heads": kw["decoder_num_heads"],
                "decoder_intermediate_size": 4 * kw["decoder_embed_dim"], "norm_pix_loss": bool(kw["norm_target"])})
    return cfg


def save_hf_pretraining(out_dir: str | Path, state: Mapping[str, torch.Tensor], model_kwargs: Mapping[str, Any],
                        where: str = "checkpoint", force: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (VideoMAEForPreTraining) and, for a model with a time head,
    ``motionmae_time_head.safetensors``, plus ``motionmae_config.json``; atomic (a temp directory renamed)."""
    kw = resolved_kwargs(model_kwargs, where)
    check_exportable(kw, where)
    tensors, time_head = pretraining_to_hf(state, kw, where)
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    config = pretraining_hf_config(kw, encoder_state)
    with export_directory(out_dir, force) as tmp:
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        if time_head:
            save_file(time_head, str(tmp / TIME_HEAD_WEIGHTS), metadata={"format": "pt"})
        (tmp / MOTIONMAE_CONFIG).write_text(json.dumps({"model": kw}, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def _kwargs_of_hf_dir(path: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    if (path / MOTIONMAE_CONFIG).is_file():
        return json.loads((path / MOTIONMAE_CONFIG).read_text())["model"]
    # an HF pretraining directory we did not write (VideoMAE's own): a frame-only MotionMAE of its shape
    kw = kwargs_from_hf_config(cfg, str(path / HF_CONFIG))
    dim = cfg.get("decoder_hidden_size", 384)
    if cfg.get("decoder_intermediate_size", 4 * dim) != 4 * dim:
        raise CheckpointError(f"{path / HF_CONFIG}: decoder_intermediate_size is not 4 x decoder_hidden_size")
    kw.update(decoder_embed_dim=dim, decoder_depth=cfg.get("decoder_num_hidden_layers", 4),
              decoder_num_heads=cfg.get("decoder_num_attention_heads", 6), decoder_mode="divide", target="frame",
              norm_target=bool(cfg.get("norm_pix_loss", True)))
    return kw


def load_hf_pretraining(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(whole pretraining state dict in our names, ``build_pretrain_model`` kwargs) from a directory written by
    ``save_hf_pretraining``, or from any HF VideoMAEForPreTraining directory (read as a frame-only model):
    ``build_pretrain_model(**kwargs).load_state_dict(state)`` is the model that was exported."""
    path = Path(path)
    if not (path / HF_CONFIG).is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no {HF_CONFIG})")
    cfg = json.loads((path / HF_CONFIG).read_text())
    if "VideoMAEForPreTraining" not in cfg.get("architectures", []):
        raise CheckpointError(f"{path}: architectures={cfg.get('architectures')}, not VideoMAEForPreTraining; "
                              f"an encoder or classifier directory loads through load_into")
    kw = _kwargs_of_hf_dir(path, cfg)
    raw = read_hf_weights(path)
    encoder, _ = hf_to_ours(raw, str(path))
    state = {f"encoder.{k}": v for k, v in encoder.items()}
    src = {k[len("videomae."):] if k.startswith("videomae.") else k: v for k, v in raw.items()}
    dec, head = _frame_decoder_names(kw)
    decoder = {k: src[k] for k in src if k.startswith(("decoder.", "encoder_to_decoder.", "mask_token"))}
    state[f"{dec}encoder_to_decoder.weight"] = decoder.pop("encoder_to_decoder.weight")
    state[f"{dec}mask_token"] = decoder.pop("mask_token")
    blocks_from_hf(decoder, "decoder.decoder_layers.", f"{dec}blocks.", state, str(path))
    for ours, theirs in (("norm", "norm"), (head, "head")):
        for part in ("weight", "bias"):
            state[f"{dec}{ours}.{part}"] = decoder.pop(f"decoder.{theirs}.{part}")
    if decoder:
        raise CheckpointError(f"{path}: decoder tensors with no counterpart in our model: {', '.join(sorted(decoder))}")
    if (path / TIME_HEAD_WEIGHTS).is_file():
        state.update(read_weight_file(path / TIME_HEAD_WEIGHTS))
    return {k: v.float() for k, v in state.items()}, kw

