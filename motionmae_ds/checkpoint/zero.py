"""Reading a DeepSpeed tag directory without an engine: the exact fp32 master weights (ZeRO shards of any
world size, or a universal checkpoint's per-parameter files), the bf16 module copy, and the client state."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Optional

import torch

from motionmae_ds.checkpoint.layout import (
    MODEL_STATES,
    UNIVERSAL_PARAMS,
    ZERO3_MODEL_STATES,
    ZERO_SHARDS,
    CheckpointError,
    first_line,
    has_zero_shards,
    is_universal,
)


def torch_load(file: str | Path) -> Any:
    """``torch.load`` on the CPU with a one-line CheckpointError for a truncated or foreign file."""
    try:
        # DeepSpeed model states pickle our client state (config dict, RNG states) and VideoMAE files their
        # argparse Namespace, not only tensors: weights_only cannot read either
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{file}: corrupt or unreadable checkpoint file ({first_line(exc)})") from None


def model_states_file(tag_dir: Path) -> Path:
    """The file holding the client state: MODEL_STATES, or rank 0's model states under ZeRO-3."""
    if (tag_dir / MODEL_STATES).is_file():
        return tag_dir / MODEL_STATES
    rank0 = tag_dir / ZERO3_MODEL_STATES.replace("*", "0")
    if rank0.is_file():
        return rank0
    raise CheckpointError(f"{tag_dir}: incomplete checkpoint (no {MODEL_STATES})")


def load_model_states(ckpt_dir: str | Path, tag: str) -> dict[str, Any]:
    """The whole model-states file: the (bf16) ``module`` weights plus our client state."""
    file = model_states_file(Path(ckpt_dir) / tag)
    states = torch_load(file)
    if not isinstance(states, dict) or "module" not in states:
        raise CheckpointError(f"{file}: not a DeepSpeed model-state file (no 'module')")
    return states


def read_client_state(ckpt_dir: str | Path, tag: str) -> dict[str, Any]:
    """Everything the model-states file holds besides the module weights (our run config is under
    ``config``, the writer's world size under ``world_size``)."""
    return {k: v for k, v in load_model_states(ckpt_dir, tag).items() if k != "module"}


def module_weights(states: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The module copy of ``load_model_states``' result, cast to fp32 (bf16-rounded under bf16 training)."""
    module = states["module"]
    if not isinstance(module, dict) or not module:
        # ZeRO-3 keeps only placeholders there; its weights live in the shards
        raise CheckpointError(f"{where}: the model-states file holds no module weights")
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


def _find_corrupt(tag_dir: Path) -> Optional[str]:
    for file in sorted(tag_dir.glob("*.pt")):
        try:
            torch.load(file, map_location="cpu", weights_only=False)
        except Exception as exc:
            return f"{file}: corrupt or unreadable checkpoint shard ({first_line(exc)})"
    return None


def fp32_state_dict(ckpt_dir: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """The exact fp32 master weights: consolidated ZeRO shards, or a universal checkpoint's ``fp32.pt`` files.
    The tensors may be views of one flat buffer; clone before saving them."""
    ckpt_dir = Path(ckpt_dir)
    tag_dir = ckpt_dir / tag
    if is_universal(tag_dir):
        params = sorted(p for p in (tag_dir / UNIVERSAL_PARAMS).iterdir() if p.is_dir())
        out, shapes = {}, None
        for p in params:
            saved = torch_load(p / "fp32.pt")
            if isinstance(saved, dict):  # ZeRO-1/2 sources: {"param": tensor of its shape, ...}
                out[p.name] = saved["param"]
                continue
            # ZeRO-3 sources: the flat fp32 tensor; its shape is in the model states' param_shapes
            if shapes is None:
                groups = load_model_states(ckpt_dir, tag).get("param_shapes") or []
                shapes = {name: tuple(shape) for group in groups for name, shape in group.items()}
            if p.name not in shapes:
                raise CheckpointError(f"{p}: no shape for {p.name} in the model states' param_shapes")
            out[p.name] = saved.reshape(shapes[p.name])
        return out
    if not has_zero_shards(tag_dir):
        raise CheckpointError(f"{tag_dir}: no ZeRO optimizer shards ({ZERO_SHARDS}), so no fp32 master weights to "
                              f"consolidate")
    # its progress prints and bars would bury the one line a failure should give
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # imported here, not at the top: it costs seconds, and the training engine never needs it
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
            failure = None
        except Exception as exc:
            failure = first_line(exc)
    if failure is not None:
        raise CheckpointError(_find_corrupt(tag_dir) or f"{tag_dir}: ZeRO consolidation failed ({failure})")
    return dict(state)
