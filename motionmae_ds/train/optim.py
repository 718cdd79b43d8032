"""AdamW parameter groups: no weight decay on 1-D params, biases and positional/mask tokens.

timm forms the groups (`param_groups_weight_decay`, `param_groups_layer_decay`); we add to each group
``param_names``, an ``lr_scale`` (1.0 without layer decay) and a ``wd_scale`` (0 or 1), so the per-step
schedule can set ``g["lr"]`` and ``g["weight_decay"]``. DeepSpeed keeps these extra keys on its groups but
drops empty ones, so groups are matched by keys, never by index.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from motionmae_ds.models.attentive import AttentiveProbe
from motionmae_ds.models.classifier import LinearProbe

# names (substrings) of parameters that are tokens/tables rather than weights
NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "q_bias", "v_bias")

# timm returns weight_decay=0 for every group when asked for weight_decay=0, which would hide which
# parameters decay; the schedule may ramp decay up from 0, so ask with this and set the real value after.
_MEMBERSHIP_WEIGHT_DECAY = 1.0


def _no_decay_patterns(model: nn.Module, extra: Iterable[str] = ()) -> list[str]:
    """timm's no_weight_decay_list (fnmatch patterns): the model's own exceptions (timm's convention, a
    no_weight_decay() method), the caller's, and NO_DECAY_NAMES as substrings."""
    own = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return [*own, *extra, *(f"*{t}*" for t in NO_DECAY_NAMES)]


def _with_scales(model: nn.Module, groups: list[dict[str, Any]], weight_decay: float) -> list[dict[str, Any]]:
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        decay = g["weight_decay"] > 0
        g["param_names"] = [names[id(p)] for p in g["params"]]
        g.setdefault("lr_scale", 1.0)
        g["weight_decay"] = weight_decay if decay else 0.0
        g["wd_scale"] = 1.0 if decay else 0.0
    return groups


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in a no-decay group and a decay group (each only if not empty), lr scale 1."""
    groups = param_groups_weight_decay(model, weight_decay=_MEMBERSHIP_WEIGHT_DECAY,
                                       no_weight_decay_list=_no_decay_patterns(model))
    for g in _with_scales(model, groups, weight_decay):
        g["group_name"] = "decay" if g["wd_scale"] else "no_decay"
    return groups


def timm_layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                            no_weight_decay_list: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Layer-decay groups (for finetuning): timm assigns layers via ``model.group_matcher``, and layer ``i``
    of ``L`` gets an lr scale of ``layer_decay ** (L - 1 - i)``; models without a matcher get one layer."""
    groups = param_groups_layer_decay(model, weight_decay=_MEMBERSHIP_WEIGHT_DECAY, layer_decay=layer_decay,
                                      no_weight_decay_list=_no_decay_patterns(model, no_weight_decay_list))
    return _with_scales(model, groups, weight_decay)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply the schedule's values to every group through its own scales."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        g["weight_decay"] = weight_decay * g.get("wd_scale", 1.0)


def finetune_param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Layer-decay groups over the trainable parameters; a probe's (pooler and head, or the head alone) all at
    lr scale 1: the frozen encoder has no layers to decay."""
    if isinstance(model, (LinearProbe, AttentiveProbe)):
        return param_groups(model, cfg.optim.weight_decay)
    # timm reads the layer ids from the classifier's group_matcher (embedding 0, block i -> i + 1, rest last)
    return timm_layer_decay_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
