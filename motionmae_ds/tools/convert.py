"""Take weights out of DeepSpeed checkpoints in the formats other code reads (``launch/convert_checkpoint.py``).

Formats written by ``export``:
- ``plain``: the whole model's fp32 state dict, consolidated from the ZeRO shards (the optimizer's fp32
  master copy, not the bf16 module copy), a bare name -> tensor dict for ``torch.load`` + ``load_state_dict``;
- ``encoder``: the encoder only, VideoMAE finetune names (``patch_embed.proj``, ``blocks.{i}``, and the
  pretraining encoder's final ``norm``), ready for our finetuning loader or VideoMAE-style code;
- ``hf``: a ``transformers`` VideoMAE directory (``config.json`` + ``model.safetensors``) of the encoder or the
  classifier;
- ``hf_pretraining``: the whole pretraining model, its frame branch as a ``transformers``
  ``VideoMAEForPreTraining`` directory (encoder + decoder) and the time head beside it
  (``checkpoint/hf_pretraining.py``);
- ``universal``: DeepSpeed's universal checkpoint in a run directory of its own (default: the source run's +
  ``_universal``) with a copy of the source run's record; the source run is only read.
``plain``/``encoder`` go to safetensors instead of a pickle with ``use_safetensors`` (the run config then
rides in the file's metadata, which the checkpoint loader reads back). The source is a DeepSpeed run,
checkpoint or tag directory, or an HF VideoMAE directory; reading it is the checkpoint package's job.

Every check runs before anything is written, and outputs are written under a temporary name and renamed at
the end, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import save_file

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import model_kwargs
from motionmae_ds.checkpoint.weights import SAFETENSORS_CONFIG_KEY
from motionmae_ds.config import ConfigError
from motionmae_ds.config.pretrain import config_from_dict

FORMATS = ("plain", "encoder", "hf", "hf_pretraining", "universal")
DIRECTORY_FORMATS = ("hf", "hf_pretraining")


def _write_file(path: Path, state: Mapping[str, torch.Tensor], use_safetensors: bool,
                config: Optional[Mapping[str, Any]]) -> Path:
    # clone: consolidated ZeRO tensors are views of one flat buffer, which torch.save would store whole
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if use_safetensors:
            meta = {"format": "pt"}
            if config is not None:
                meta[SAFETENSORS_CONFIG_KEY] = json.dumps(config)
            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_output(output: Path, fmt: str, force: bool) -> None:
    if output.exists() and not force:
        raise ckpt.CheckpointError(f"{output}: exists (pass --force to replace it)")
    if output.is_dir() and fmt not in DIRECTORY_FORMATS:
        raise ckpt.CheckpointError(f"{output}: is a directory; --format {fmt} writes one file")


def read_source(source: str | Path, tag: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(exact fp32 state dict, info as ``ckpt.read_weights`` gives it) from a DeepSpeed run / checkpoint /
    tag directory or an HF VideoMAE directory; anything else is a one-line CheckpointError."""
    if not ckpt.hf.is_hf_dir(source):
        ckpt.resolve(source, tag)  # weight files are finetuning inputs, not conversion sources
    return ckpt.read_weights(source, tag=tag, exact=True)


def pretraining_kwargs(info: Mapping[str, Any]) -> dict[str, Any]:
    """``build_pretrain_model`` kwargs of the run that wrote a checkpoint: its model section alone lacks the
    targets and the pixel statistics, so the whole run config is read back."""
    try:
        return model_kwargs(config_from_dict(dict(info["config"]), origin=info["where"]))
    except ConfigError as exc:
        raise ckpt.CheckpointError(f"not a pretraining run's config: {exc}") from None


def export(source: str | Path, output: Optional[str | Path], fmt: str, tag: Optional[str] = None,
           use_safetensors: bool = False, force: bool = False) -> Path:
    """Convert ``source`` to ``fmt`` at ``output``; see the module docstring. Returns what was written."""
    if fmt not in FORMATS:
        raise ckpt.CheckpointError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "universal":
        if use_safetensors:
            raise ckpt.CheckpointError("--safetensors applies to the plain and encoder formats only")
        return ckpt.to_universal(source, tag, output, force=force)
    if output is None:
        raise ckpt.CheckpointError(f"--output is required for --format {fmt}")
    output = Path(output)
    if fmt in DIRECTORY_FORMATS and use_safetensors:
        raise ckpt.CheckpointError(f"--safetensors applies to the plain and encoder formats only ({fmt} always is)")
    _check_output(output, fmt, force)
    state, info = read_source(source, tag)
    kwargs = info["model_kwargs"]
    if fmt in DIRECTORY_FORMATS and kwargs is None:
        raise ckpt.CheckpointError(f"{info['where']}: no run config in the checkpoint's client state; cannot "
                                   f"tell the model shape for an HF export")
    if fmt == "hf_pretraining":
        if "head.weight" in state:
            raise ckpt.CheckpointError(f"{info['where']}: a finetuned classifier has no decoder; export it with "
                                       f"--format hf")
        return ckpt.hf_pretraining.save_hf_pretraining(output, state, pretraining_kwargs(info), where=info["where"],
                                                       force=force)
    if fmt == "hf":
        weights = state if "head.weight" in state else ckpt.encoder_weights(state)[0]
        try:
            return ckpt.hf.save_hf_videomae(output, weights, kwargs, force=force)
        except ckpt.CheckpointError as exc:
            raise ckpt.CheckpointError(f"{info['where']}: {exc}") from None
    if fmt == "encoder":
        state = ckpt.encoder_weights(state)[0]
    return _write_file(output, state, use_safetensors, {"model": kwargs} if kwargs is not None else None)
