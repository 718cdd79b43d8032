"""Mask generators drawn on the device: every sample masks the same number of tokens, so the
encoder can gather visible tokens into a dense (B, N_visible, D) batch."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from motionmae_ds.models.validation import ModelConfigError, check_choice, check_fraction, check_positive_int

MASK_KINDS = ("random", "tube", "frame")
# ratio * count is floored, with slack so 0.29 * 100 counts 29 and not 28 after float rounding.
_FLOOR_SLACK = 1e-9


def _masked_count(ratio: float, total: int, what: str) -> int:
    k = math.floor(ratio * total + _FLOOR_SLACK)
    if not 0 < k < total:
        raise ModelConfigError(f"mask ratio {ratio} masks {k} of the {total} {what}; need at least one "
                               f"masked and one visible")
    return k


class MaskGenerator:
    """`gen(batch_size, device=None, generator=None)` -> bool (B, t*h*w), True = masked, token order
    (t h w). With a `generator` the draw is reproducible and `device` defaults to the generator's."""

    kind: str = ""

    def __init__(self, grid: Sequence[int], ratio: float) -> None:
        if len(grid) != 3:
            raise ModelConfigError(f"mask grid {tuple(grid)!r} must be (t, h, w)")
        self.grid = tuple(check_positive_int(f"grid[{i}]", g) for i, g in enumerate(grid))
        self.ratio = check_fraction("mask_ratio", ratio, low_open=True, high_open=True)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.num_masked = self._count_masked()
        self.num_visible = self.num_tokens - self.num_masked

    def _count_masked(self) -> int:
        raise NotImplementedError

    def _draw(self, batch_size: int, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, batch_size: int, device: Union[str, torch.device, None] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_positive_int("batch_size", batch_size)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        return self._draw(batch_size, torch.device(device), generator).reshape(batch_size, self.num_tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={self.grid}, ratio={self.ratio}, num_masked={self.num_masked})"


def _lowest_k(noise: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask, same shape as noise, True at the k smallest entries along the last dim."""
    idx = noise.topk(k, dim=-1, largest=False).indices
    return torch.zeros(noise.shape, dtype=torch.bool, device=noise.device).scatter_(-1, idx, True)


class RandomMask(MaskGenerator):
    """Independent spatial masks per temporal slice, each with exactly floor(ratio * h * w) tokens."""

    kind = "random"

    def _count_masked(self) -> int:
        t, h, w = self.grid
        return t * _masked_count(self.ratio, h * w, "tokens per temporal slice")

    def _draw(self, batch_size, device, generator):
        t, h, w = self.grid
        noise = torch.rand(batch_size, t, h * w, device=device, generator=generator)
        return _lowest_k(noise, self.num_masked // t)


class TubeMask(MaskGenerator):
    """One spatial mask per sample, repeated at every temporal index ("space-only")."""

    kind = "tube"

    def _count_masked(self) -> int:
        t, h, w = self.grid
        return t * _masked_count(self.ratio, h * w, "tokens per temporal slice")

    def _draw(self, batch_size, device, generator):
        t, h, w = self.grid
        noise = torch.rand(batch_size, 1, h * w, device=device, generator=generator)
        return _lowest_k(noise, self.num_masked // t).expand(batch_size, t, h * w)


class FrameMask(MaskGenerator):
    """Whole temporal slices masked, floor(ratio * t) of them per sample ("time-only")."""

    kind = "frame"

    def _count_masked(self) -> int:
        t, h, w = self.grid
        return h * w * _masked_count(self.ratio, t, "temporal slices")

    def _draw(self, batch_size, device, generator):
        t, h, w = self.grid
        noise = torch.rand(batch_size, t, device=device, generator=generator)
        return _lowest_k(noise, self.num_masked // (h * w))[:, :, None].expand(batch_size, t, h * w)


_GENERATORS = {cls.kind: cls for cls in (RandomMask, TubeMask, FrameMask)}


def build_mask_generator(kind: str = "random", grid: Optional[Sequence[int]] = None,
                         ratio: float = 0.9) -> MaskGenerator:
    """A generator for the model's token grid `(t, h, w)` (`model.grid`)."""
    check_choice("mask kind", kind, MASK_KINDS)
    if grid is None:
        raise ModelConfigError("build_mask_generator needs grid=(t, h, w), e.g. model.grid")
    return _GENERATORS[kind](grid, ratio)
