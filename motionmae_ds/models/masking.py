"""Mask generators drawn on the device: every sample masks the same number of tokens, so the
encoder can gather visible tokens into a dense (B, N_visible, D) batch."""
from __future__ import annotations

import math
from dataclasses import dataclass
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


# -- decoder masking --------------------------------------------------------------------------
DECODER_MASK_KINDS = ("running_cell",)
DECODER_HEADS = ("shared", "complementary")
# decoder_ratio -> places of each 2x2 cell the decoder keeps: (1 - ratio) * 4
DECODER_RATIOS = {0.25: 3, 0.5: 2, 0.75: 1}
CELL_PLACES = 4


class RunningCellDecoderMask:
    """Which tokens the decoders run on, VideoMAE V2's running-cell pattern (its "dual masking").

    The (h, w) grid is tiled by 2x2 cells whose places are numbered in raster order (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right). At temporal slice t a sample with phase p keeps the places
    (p + t + j) mod 4 for j < keep, keep = (1 - ratio) * 4: the pattern moves on by one place per slice, so
    over four slices every place is kept `keep` times. Each sample draws its phase from the generator.

    `gen(batch_size, device=None, generator=None)` -> {"frame": keep, "motion": keep}, bool (B, t*h*w) with
    True = the decoder runs on that token (token order (t h w), as the encoder mask). The masked tokens a head
    reconstructs are mask & keep; encoder-visible tokens always enter the decoder whatever their place.
    With heads="shared" both heads get the same tensor; with "complementary" the time head's window starts
    where the space head's ends (phase + keep): at ratio 0.5 the two kept sets are complements, so every
    masked token is supervised by exactly one head per step; at 0.75 they are disjoint, at 0.25 they overlap
    on two places and cover all four."""

    kind = "running_cell"

    def __init__(self, grid: Sequence[int], ratio: float, heads: str = "shared") -> None:
        if len(grid) != 3:
            raise ModelConfigError(f"decoder mask grid {tuple(grid)!r} must be (t, h, w)")
        self.grid = tuple(check_positive_int(f"grid[{i}]", g) for i, g in enumerate(grid))
        keep = next((k for r, k in DECODER_RATIOS.items() if math.isclose(ratio, r)), None)
        if keep is None:
            raise ModelConfigError(f"decoder mask ratio {ratio} is not one of "
                                   f"{', '.join(str(r) for r in DECODER_RATIOS)} (0 turns decoder masking off)")
        t, h, w = self.grid
        if h % 2 or w % 2:
            raise ModelConfigError(f"the running-cell decoder mask tiles the token grid by 2x2 cells; the grid "
                                   f"(t, h, w) = {self.grid} has an odd side")
        self.heads = check_choice("decoder heads", heads, DECODER_HEADS)
        self.ratio, self.keep = float(ratio), keep
        self.num_tokens = t * h * w
        self.num_kept = t * h * w * keep // CELL_PLACES
        rows, cols = torch.arange(h), torch.arange(w)
        place = (rows[:, None] % 2) * 2 + cols[None, :] % 2  # (h, w), 0..3
        # (t, h*w): the place each token occupies, moved back by its slice; kept iff (place - t - p) mod 4 < keep
        offset = (place.reshape(1, h * w) - torch.arange(t)[:, None]) % CELL_PLACES
        # one copy per device, made at the first draw there: copying it at every draw would be a blocking
        # host-to-device copy in each step on an accelerator
        self._offsets = {offset.device: offset}

    def keep_for(self, phase: torch.Tensor) -> torch.Tensor:
        """(B,) phases in 0..3 -> bool (B, t*h*w) kept tokens."""
        offset = self._offsets.get(phase.device)
        if offset is None:
            offset = self._offsets[phase.device] = next(iter(self._offsets.values())).to(phase.device)
        return ((offset[None] - phase[:, None, None]) % CELL_PLACES < self.keep).reshape(phase.shape[0], -1)

    def __call__(self, batch_size: int, device: Union[str, torch.device, None] = None,
                 generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        check_positive_int("batch_size", batch_size)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        phase = torch.randint(0, CELL_PLACES, (batch_size,), device=torch.device(device), generator=generator)
        frame = self.keep_for(phase)
        motion = frame if self.heads == "shared" else self.keep_for((phase + self.keep) % CELL_PLACES)
        return {"frame": frame, "motion": motion}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(grid={self.grid}, ratio={self.ratio}, heads={self.heads!r}, "
                f"num_kept={self.num_kept})")


def build_decoder_mask(kind: str = "running_cell", grid: Optional[Sequence[int]] = None, ratio: float = 0.0,
                       heads: str = "shared") -> Optional[RunningCellDecoderMask]:
    """The decoder-mask generator for `model.grid`, or None when `ratio` is 0 (every token decoded)."""
    check_choice("decoder mask kind", kind, DECODER_MASK_KINDS)
    check_choice("decoder heads", heads, DECODER_HEADS)
    if grid is None:
        raise ModelConfigError("build_decoder_mask needs grid=(t, h, w), e.g. model.grid")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ModelConfigError(f"decoder mask ratio {ratio!r} must be a number")
    if ratio == 0:
        return None
    return RunningCellDecoderMask(grid, ratio, heads)


# -- counts known before drawing ----------------------------------------------------------------
@dataclass(frozen=True)
class MaskCounts:
    """What the generators guarantee before any mask is drawn: every encoder mask masks exactly ``num_masked``
    tokens, and with decoder masking each head's masked & kept set holds ``kept_min``..``kept_max`` tokens
    per sample. Handed to ``MotionMAE.forward`` (``counts=``), these size its gathers and padding, so the
    training step never reads mask counts back from the device."""

    num_masked: int
    kept_min: Optional[int] = None
    kept_max: Optional[int] = None


def mask_counts(masker: MaskGenerator, decoder_masker: Optional[RunningCellDecoderMask] = None) -> MaskCounts:
    """The static counts of masks from ``masker`` (and ``decoder_masker``) on the same grid.

    Per temporal slice a random or tube mask masks m = num_masked / t tokens and a running cell keeps
    k = h * w * keep / 4, so masked & kept holds max(0, m + k - h*w)..min(m, k) of them. Exact counts where
    the structure fixes them: a frame mask masks whole slices, each keeping exactly k; a tube mask repeats
    one spatial set, and the cell visits every place ``keep`` times in four slices, so over a multiple of
    four slices each masked place is kept t * keep / 4 times."""
    if decoder_masker is None:
        return MaskCounts(masker.num_masked)
    if tuple(decoder_masker.grid) != tuple(masker.grid):
        raise ModelConfigError(f"decoder mask grid {decoder_masker.grid} differs from the mask grid {masker.grid}")
    t, h, w = masker.grid
    keep = decoder_masker.keep
    if isinstance(masker, FrameMask) or (isinstance(masker, TubeMask) and t % CELL_PLACES == 0):
        exact = masker.num_masked * keep // CELL_PLACES
        return MaskCounts(masker.num_masked, exact, exact)
    m, k = masker.num_masked // t, h * w * keep // CELL_PLACES
    return MaskCounts(masker.num_masked, t * max(0, m + k - h * w), t * min(m, k))
