"""Take weights out of DeepSpeed checkpoints (and bring VideoMAE / HF weights in).

Formats written by ``export``:
- ``plain``: the whole model's fp32 state dict, consolidated from the ZeRO shards (the optimizer's fp32
  master copy, not the bf16 module copy), a bare name -> tensor dict for ``torch.load`` + ``load_state_dict``;
- ``encoder``: the encoder only, VideoMAE finetune names (``patch_embed.proj``, ``blocks.{i}``, and the
  pretraining encoder's final ``norm``), ready for our finetuning loader or VideoMAE-style code;
- ``hf``: a ``transformers`` VideoMAE directory (``config.json`` + ``model.safetensors``);
- ``universal``: DeepSpeed's universal checkpoint next to the source tag, ``latest`` pointed at it.
``plain``/``encoder`` go to safetensors instead of a pickle with ``use_safetensors`` (the run config then
rides in the file's metadata under ``motionmae_config``).

Every check runs before anything is written, and outputs are written under a temporary name and renamed at
the end, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from motionmae_ds.tools import hf_interop

FORMATS = ("plain", "encoder", "hf", "universal")
MODEL_STATES = "mp_rank_00_model_states.pt"
# a classifier's pooled-feature norm and head are not encoder weights
CLASSIFIER_ONLY = ("fc_norm.", "head.")


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message names the path and the problem in one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _tags(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and (p / MODEL_STATES).is_file()
                  and not p.name.startswith("."))


def resolve_checkpoint(path: str | Path, tag: Optional[str] = None) -> tuple[Path, str]:
    """(checkpoint dir, tag) for a run dir, a checkpoint dir (``latest`` or ``tag``) or a tag dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a DeepSpeed checkpoint directory (a file)")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if tag is None and (path / MODEL_STATES).is_file():
        return path.parent, path.name
    available = _tags(path)
    if tag is None:
        latest = path / "latest"
        if not latest.is_file():
            if available:
                raise CheckpointError(f"{path}: no 'latest' file; pass --tag (available: {', '.join(available)})")
            raise CheckpointError(f"{path}: not a DeepSpeed checkpoint directory (no 'latest', no tag "
                                  f"directories with {MODEL_STATES})")
        tag = latest.read_text().strip()
        if not (path / tag).is_dir():
            raise CheckpointError(f"{latest}: names tag '{tag}' but {path / tag} does not exist")
    elif not (path / tag).is_dir():
        listing = f"available: {', '.join(available)}" if available else "no tags there"
        raise CheckpointError(f"{path}: tag '{tag}' not found ({listing})")
    if not (path / tag / MODEL_STATES).is_file():
        raise CheckpointError(f"{path / tag}: incomplete checkpoint (no {MODEL_STATES})")
    return path, tag


def _load_pickle(file: Path) -> Any:
    try:
        # DeepSpeed model-state files pickle client state (our config dict, RNG states), not only tensors
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{file}: corrupt or unreadable checkpoint file ({_first_line(exc)})") from None


def read_client_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Everything ``mp_rank_00_model_states.pt`` holds besides the module weights (our run config is under
    ``config``, the writer's world size under ``world_size``)."""
    states = _load_pickle(ckpt_dir / tag / MODEL_STATES)
    if not isinstance(states, dict) or "module" not in states:
        raise CheckpointError(f"{ckpt_dir / tag / MODEL_STATES}: not a DeepSpeed model-state file (no 'module')")
    return {k: v for k, v in states.items() if k != "module"}


def _find_corrupt(tag_dir: Path) -> Optional[str]:
    for file in sorted(tag_dir.glob("*.pt")):
        try:
            torch.load(file, map_location="cpu", weights_only=False)
        except Exception as exc:
            return f"{file}: corrupt or unreadable checkpoint shard ({_first_line(exc)})"
    return None


def fp32_state_dict(ckpt_dir: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """The exact fp32 master weights: consolidated ZeRO shards, or a universal checkpoint's ``fp32.pt`` files."""
    from motionmae_ds.tools.universal import is_universal

    ckpt_dir = Path(ckpt_dir)
    tag_dir = ckpt_dir / tag
    if is_universal(tag_dir):
        out = {}
        for param_dir in sorted(p for p in (tag_dir / "zero").iterdir() if p.is_dir()):
            out[param_dir.name] = _load_pickle(param_dir / "fp32.pt")["param"]
        return out
    if not any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        raise CheckpointError(f"{tag_dir}: no ZeRO optimizer shards (*zero_pp_rank_*optim_states.pt), so no fp32 "
                              f"master weights to consolidate")
    # its progress prints and bars would bury the one line a failure should give
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
            failure = None
        except Exception as exc:
            failure = _first_line(exc)
    if failure is not None:
        raise CheckpointError(_find_corrupt(tag_dir) or f"{tag_dir}: ZeRO consolidation failed ({failure})")
    return dict(state)


def model_kind(state: Mapping[str, torch.Tensor]) -> str:
    """``pretrain`` (our MotionMAE names), ``classifier`` (has ``head``) or ``encoder`` (bare encoder names)."""
    if any(k.startswith("encoder.") for k in state):
        return "pretrain"
    return "classifier" if "head.weight" in state else "encoder"


def encoder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder weights under VideoMAE finetune names, whatever model ``state`` came from."""
    if model_kind(state) == "pretrain":
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_ONLY)}


# -- writing ----------------------------------------------------------------------------------------------

def _write_file(path: Path, state: Mapping[str, torch.Tensor], use_safetensors: bool,
                config: Optional[Mapping[str, Any]]) -> Path:
    # clone: consolidated ZeRO tensors are views of one flat buffer, which torch.save would store whole
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if use_safetensors:
            from safetensors.torch import save_file

            meta = {"format": "pt"}
            if config is not None:
                meta["motionmae_config"] = json.dumps(config)
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
        raise CheckpointError(f"{output}: exists (pass --force to replace it)")
    if output.is_dir() and fmt != "hf":
        raise CheckpointError(f"{output}: is a directory; --format {fmt} writes one file")


def read_source(source: str | Path, tag: Optional[str] = None
                ) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]], str]:
    """(fp32 state dict, model kwargs or None, description) from a DeepSpeed checkpoint / run dir or an HF
    VideoMAE directory."""
    path = Path(source)
    if path.is_dir() and hf_interop.is_hf_dir(path):
        state, kwargs = hf_interop.load_hf_videomae(path)
        return state, kwargs, f"HF directory {path}"
    ckpt_dir, tag = resolve_checkpoint(path, tag)
    client = read_client_state(ckpt_dir, tag)
    state = fp32_state_dict(ckpt_dir, tag)
    config = client.get("config")
    kwargs = dict(config["model"]) if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping) \
        else None
    return state, kwargs, str(ckpt_dir / tag)


def export(source: str | Path, output: Optional[str | Path], fmt: str, tag: Optional[str] = None,
           use_safetensors: bool = False, force: bool = False) -> Path:
    """Convert ``source`` to ``fmt`` at ``output``; see the module docstring. Returns what was written."""
    from motionmae_ds.tools import universal

    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "universal":
        if use_safetensors:
            raise CheckpointError("--safetensors applies to the plain and encoder formats only")
        ckpt_dir, tag = resolve_checkpoint(source, tag)
        try:
            return universal.to_universal(ckpt_dir, tag, output, force=force)
        except universal.UniversalConversionError as exc:
            raise CheckpointError(str(exc)) from None
    if output is None:
        raise CheckpointError(f"--output is required for --format {fmt}")
    output = Path(output)
    if fmt == "hf" and use_safetensors:
        raise CheckpointError("--safetensors applies to the plain and encoder formats only (hf always is)")
    _check_output(output, fmt, force)
    state, kwargs, where = read_source(source, tag)
    config = None
    if fmt == "hf":
        if kwargs is None:
            raise CheckpointError(f"{where}: no run config in the checkpoint's client state; cannot tell the "
                                  f"model shape for an HF export")
        weights = state if model_kind(state) == "classifier" else encoder_state(state)
        try:
            return hf_interop.save_hf_videomae(output, weights, kwargs, force=force)
        except hf_interop.HFInteropError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
    if fmt == "encoder":
        state = encoder_state(state)
    if kwargs is not None:
        config = {"model": kwargs}
    return _write_file(output, state, use_safetensors, config)


# -- importing --------------------------------------------------------------------------------------------

def load_encoder_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Encoder weights (VideoMAE finetune names, maybe ``norm``) from anything we read: an HF VideoMAE
    directory, a VideoMAE or our ``.pth``/safetensors file, a DeepSpeed run or checkpoint directory."""
    from motionmae_ds.models.pretrained import PretrainedLoadError, normalise_names, read_checkpoint

    path = Path(source)
    if path.is_dir() and hf_interop.is_hf_dir(path):
        state, _ = hf_interop.load_hf_videomae(path)
        return encoder_state(state), f"HF directory {path}"
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read as safetensors ({_first_line(exc)})") from None
    else:
        try:
            raw, _ = read_checkpoint(path)
        except PretrainedLoadError as exc:
            raise CheckpointError(str(exc)) from None
    state, _ = normalise_names(raw)  # strips module./backbone. wrappers and keeps an encoder.* model's encoder
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_ONLY)}, str(path)


def init_encoder(model: torch.nn.Module, source: str | Path) -> dict[str, list[str]]:
    """Initialise a pretraining model's encoder (``model.encoder``) from ``source`` for continued pretraining.

    Shapes must match exactly; a source without the final ``norm`` (a finetuned classifier) leaves the
    model's fresh norm, and that is reported. Returns {"loaded", "missing", "dropped"}; anything else in the
    source that has no place in the encoder is an error."""
    state, where = load_encoder_weights(source)
    dropped = [k for k in state if k.startswith(("space_head.", "time_head.", "decoder.", "mask_token",
                                                 "encoder_to_decoder."))]
    state = {k: v for k, v in state.items() if k not in dropped}
    encoder = model.encoder
    own = encoder.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise CheckpointError(f"{where}: tensors with no place in the encoder: {', '.join(unexpected)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, the encoder {tuple(own[k].shape)}")
    result = encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    missing = list(result.missing_keys)
    if [k for k in missing if not k.startswith("norm.")]:
        raise CheckpointError(f"{where}: encoder weights missing: {', '.join(missing)}")
    return {"loaded": sorted(state), "missing": missing, "dropped": dropped}
