"""An fp32 exponential moving average of a model's weights and buffers (``finetune.model_ema``).

The math of timm's ``ModelEmaV3`` as finetuning used it (``dtype=float32``, no warmup): at optimizer step ``s``
(counted from 1) ``ema = decay * ema + (1 - decay) * model`` for every floating-point parameter and buffer, with
decay 0 at step 1 (the first update copies the model), integer buffers copied; ``tests/train/test_losses_ema.py`` checks
it against timm's class number for number. Our own small class keeps timm (whose import pulls in torchvision and
torch._dynamo, ~1.5 s per process) out of the training processes, and knows ZeRO-3: there the engine's module holds
empty placeholders and each rank one shard of every weight, so the shadow copy is a separate, unpartitioned model
filled from the gathered weights, and every update gathers them (``deepspeed.zero.GatheredParameters``; every rank
takes part, every rank keeps the same full fp32 average).

Frozen parameters (a probe's encoder) never change, so their average is the weight itself: they are copied in and
then left alone. Each update touches the trained parameters and the buffers only, and ``state_dict`` leaves the
frozen ones out (a probe's checkpoint then holds no copy of its encoder; ``copy_frozen`` fills them back from the
model, which the probe restores from the encoder's own source).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import deepspeed
import torch
from torch import nn


def _zero3_params(model: nn.Module, names: Optional[Callable[[str], bool]] = None) -> list[nn.Parameter]:
    """The parameters ZeRO-3 partitioned (they carry a ``ds_id``), those whose name ``names`` accepts; empty
    otherwise."""
    return [p for n, p in model.named_parameters() if hasattr(p, "ds_id") and (names is None or names(n))]


def _pairs(shadow: nn.Module, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (shadow tensor, model tensor) of every entry of the state dict (parameters and persistent buffers; a
    non-persistent buffer such as the position table is a constant of the architecture)."""
    theirs = model.state_dict(keep_vars=True)
    mine = shadow.state_dict(keep_vars=True)
    if sorted(mine) != sorted(theirs):
        raise ValueError("the EMA's module and the model have different parameters or buffers")
    return {name: (mine[name], theirs[name]) for name in mine}


class ModelEma:
    """``ModelEma(model, decay, shadow=None, device=None)``: ``module`` is the fp32 average, in eval mode.

    ``shadow``: a freshly built module of the model's architecture to hold the average; required when ``model``
    is partitioned by ZeRO-3 (a deep copy would copy its placeholders), otherwise a deep copy of ``model`` is made.
    ``device``: where the average lives (default: where the model's first parameter is)."""

    def __init__(self, model: nn.Module, decay: float, shadow: Optional[nn.Module] = None,
                 device: Optional[torch.device] = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay {decay} must be in [0, 1]")
        self.decay = decay
        partitioned = _zero3_params(model)
        if shadow is None:
            if partitioned:
                raise ValueError("a ZeRO-3 model's EMA needs a freshly built shadow module to hold the full weights")
            shadow = copy.deepcopy(model)
        if device is None:
            device = next(model.parameters()).device
        self.module = shadow.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        # names of the model's frozen parameters: the average of a weight that never changes is that weight
        self.frozen = frozenset(n for n, p in model.named_parameters() if not p.requires_grad)
        self._copy_from(model)

    def get_decay(self, step: Optional[int] = None) -> float:
        """The decay applied at optimizer step ``step`` (from 1): 0 at the first step, ``decay`` after."""
        if step is None:
            return self.decay
        return 0.0 if step <= 1 else self.decay

    @torch.no_grad()
    def _copy_from(self, model: nn.Module, only: Optional[frozenset[str]] = None) -> None:
        """Copy ``model``'s entries (those named in ``only``, or all) into the average."""
        chosen = None if only is None else only.__contains__
        with deepspeed.zero.GatheredParameters(_zero3_params(model, chosen), modifier_rank=None):
            for name, (m, t) in _pairs(self.module, model).items():
                if chosen is None or chosen(name):
                    m.copy_(t)

    def copy_frozen(self, model: nn.Module) -> None:
        """Take the frozen parameters from ``model`` again (a probe that reloaded the encoder it was trained on)."""
        self._copy_from(model, only=self.frozen)

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        """One EMA step towards ``model``'s current weights (on every rank under ZeRO-3: it gathers the trained
        ones); frozen parameters are left as they were copied."""
        weight = 1.0 - self.get_decay(step)
        trained = _zero3_params(model, lambda name: name not in self.frozen)
        with deepspeed.zero.GatheredParameters(trained, modifier_rank=None):
            pairs = [pair for name, pair in _pairs(self.module, model).items() if name not in self.frozen]
            floats = [(m, t) for m, t in pairs if m.is_floating_point()]
            for m, t in pairs:
                if not m.is_floating_point():
                    m.copy_(t)
            if not floats:
                return
            mine, theirs = [m for m, _ in floats], [t for _, t in floats]
            if all(m.dtype == t.dtype for m, t in floats):
                torch._foreach_lerp_(mine, theirs, weight=weight)
            else:
                # a bf16 model: promoted inside the kernel, no fp32 copy of the model made
                torch._foreach_mul_(mine, scalar=1.0 - weight)
                torch._foreach_add_(mine, theirs, alpha=weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average of the trained parameters and the buffers (the frozen ones are the model's own)."""
        return {k: v for k, v in self.module.state_dict().items() if k not in self.frozen}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()``'s entries; a whole module's state (checkpoints before frozen entries were left
        out) loads too. The frozen entries stay as copied from the model."""
        missing = sorted(set(self.module.state_dict()) - self.frozen - set(state))
        if missing:
            raise ValueError(f"the EMA state lacks {len(missing)} trained entries ({', '.join(missing[:3])}, ...)")
        self.module.load_state_dict({k: v for k, v in state.items() if k not in self.frozen}, strict=False)
