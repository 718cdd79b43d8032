"""AdamW parameter groups: no weight decay on 1-D params, biases and positional/mask tokens.

Each group carries ``lr_scale`` (1.0 here; layer-wise decay for finetuning gives per-layer scales) and a
``wd_scale`` (0 or 1) so the per-step schedule can set ``g["lr"]`` and ``g["weight_decay"]``. DeepSpeed
keeps these extra keys on its groups but drops empty ones, so groups are matched by keys, never by index.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

# names (substrings) of parameters that are tokens/tables rather than weights
NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "q_bias", "v_bias")

LayerIdFn = Callable[[str], int]


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or any(t in name for t in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float, layer_id: Optional[LayerIdFn] = None,
                 num_layers: int = 0, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Group trainable parameters by (decay or not, layer).

    ``layer_id`` (name -> 0..num_layers) with ``layer_decay`` < 1 gives the layer ``i`` an lr scale of
    ``layer_decay ** (num_layers - i)``; without it every group has scale 1.
    """
    # a model may name further exceptions (timm's convention: a no_weight_decay() method)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (no_weight_decay(name, param) or name in skip)
        layer = layer_id(name) if layer_id is not None else num_layers
        key = (layer, decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - layer) if layer_id is not None else 1.0
            groups[key] = {
                "params": [], "param_names": [], "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0, "wd_scale": 1.0 if decay else 0.0,
                "group_name": f"layer{layer}_{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_adamw(groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
                ) -> torch.optim.AdamW:
    # param_names is bookkeeping for us and tests; torch's optimizer would keep it anyway, but DeepSpeed
    # replaces "params" with flat partitions, so names would lie afterwards
    clean = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    return torch.optim.AdamW(clean, lr=lr, betas=betas, eps=eps)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply the schedule's values to every group through its own scales."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        g["weight_decay"] = weight_decay * g.get("wd_scale", 1.0)


def timm_layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                            no_weight_decay_list: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Layer-decay groups from timm (for finetuning), with the ``wd_scale`` key ``set_lr_wd`` expects.

    timm assigns layers via ``model.group_matcher``; models without one get a single layer.
    """
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=tuple(no_weight_decay_list))
    for g in groups:
        g["wd_scale"] = 1.0 if g["weight_decay"] > 0 else 0.0
    return groups
