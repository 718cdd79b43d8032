"""Clip augmentation on uint8 tensors: one op over all frames, never a per-frame PIL round trip.

Input clips are uint8 ``(T, H, W, 3)`` (what the decoders return) or ``(T, 3, H, W)``. A worker only draws and
cuts: ``TrainTransform.view`` draws a clip's crop box, flip and random-erasing box (a ``finishing.View``) and the
device finishes the clip (``finishing.finish_clips``: crop, resize, flip, normalise, erase); with RandAug the
worker crops, resizes, flips and augments in uint8 (RandAug must see the flipped S x S clip) and the device only
normalises and erases. ``EvalTransform`` gives uint8 ``(3, T, S, S)`` crops. ``normalize`` and ``random_erase``
are the reference the device path is tested against. Every random draw comes from the ``torch.Generator``
passed in, so a clip is a function of the generator's seed.

Choices (documented here because they differ from VideoMAE's code):
- Crop: torchvision-style random resized crop (area fraction uniform in ``scale``, aspect ratio
  log-uniform in ``ratio`` = [3/4, 4/3], 10 tries then a centre crop) for pretraining (scale [0.5, 1]) and
  finetuning (VideoMAE uses [0.08, 1] there). VideoMAE's pretraining "multi-scale crop" picks from a fixed
  grid of 4 sizes and 5-13 positions; a continuous draw covers the same zoom range without the grid.
- Resampling: bilinear with antialiasing (what PIL's BILINEAR resize does when shrinking), run on uint8
  so the crop and resize of all frames is one ``F.interpolate`` call on the CPU fast path.
- RandAug (finetuning): our own tensor version of timm's ``rand-m9-mstd0.5-inc1`` op set and magnitude
  mapping, applied after the crop (at S x S, cheaper than on full frames). One op sequence, magnitudes and
  signs are drawn per clip and each op runs on the whole ``(T, 3, S, S)`` batch, so every frame gets the
  same augmentation. Histogram ops (AutoContrast, Equalize) use each frame's own histogram, as RandAug
  over a list of PIL frames (VideoMAE's finetuning path) does.
- Random erasing (finetuning): timm's defaults (area [0.02, 1/3], aspect [0.3, 3.3], one box, per-pixel
  normal noise in normalised space), but one box for all frames of the clip - a tube the model cannot
  fill in by copying the region from a neighbouring frame. The worker draws the box and a noise seed; the
  device draws the noise from that seed (since #33: before, the worker drew the noise itself).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .finishing import View
from .sampling import spatial_crop_offsets

Box = tuple[int, int, int, int]  # (top, left, height, width)


def as_tchw(frames: torch.Tensor) -> torch.Tensor:
    """A ``(T, 3, H, W)`` view of a clip given as ``(T, H, W, 3)`` (last dim 3 wins) or ``(T, 3, H, W)``."""
    if frames.dim() != 4:
        raise ValueError(f"clip must be 4-D (T, H, W, 3) or (T, 3, H, W), got shape {tuple(frames.shape)}")
    if frames.shape[-1] == 3:
        return frames.permute(0, 3, 1, 2)
    if frames.shape[1] == 3:
        return frames
    raise ValueError(f"clip must have 3 channels in dim 1 or 3, got shape {tuple(frames.shape)}")


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator | None, high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator).item())


def sample_resized_crop_box(
    height: int,
    width: int,
    scale: Sequence[float] = (0.5, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Box:
    """A random crop box: area ``scale`` x frame area, aspect (w/h) log-uniform in ``ratio``."""
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, height - h), _randint(generator, width - w), h, w
    # Extreme frame shapes: fall back to the largest centred crop whose aspect is inside the range.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip  # same size: no resampling, so eval clips can equal the decoded pixels exactly
    if clip.dtype == torch.uint8 and clip.device.type == "cpu":
        return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = F.interpolate(clip.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(clip.dtype) if clip.dtype == torch.uint8 else out


def resized_crop(frames: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` from every frame and resize to ``size`` x ``size``: uint8 ``(T, 3, size, size)``."""
    top, left, h, w = box
    return _resize(as_tchw(frames)[:, :, top : top + h, left : left + w], (size, size))


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (aspect kept): uint8 ``(T, 3, H', W')``."""
    clip = as_tchw(frames)
    h, w = clip.shape[-2:]
    if h <= w:
        new = (size, max(size, int(round(w * size / h))))
    else:
        new = (max(size, int(round(h * size / w))), size)
    return _resize(clip, new)


def hflip(clip: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right (last dim is width)."""
    return clip.flip(-1)


def normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` in [0, 255] -> float ``(3, T, H, W)`` of ``(x / 255 - mean) / std``."""
    out = clip.permute(1, 0, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    m = torch.tensor(mean, dtype=torch.float32).mul_(255.0).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).mul_(255.0).reciprocal_().view(3, 1, 1, 1)
    return out.sub_(m).mul_(s)


def erase_box(prob: float, height: int, width: int, generator: torch.Generator | None = None,
              area: Sequence[float] = (0.02, 1 / 3), aspect: Sequence[float] = (0.3, 1 / 0.3)) -> Box | None:
    """The random-erasing box (top, left, h, w) of an ``height`` x ``width`` clip, or None (not erased)."""
    if prob <= 0 or torch.rand((), generator=generator).item() >= prob:
        return None
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(10):
        target = height * width * _uniform(generator, area[0], area[1])
        ar = math.exp(_uniform(generator, log_lo, log_hi))
        h = int(round(math.sqrt(target * ar)))
        w = int(round(math.sqrt(target / ar)))
        if 0 < h < height and 0 < w < width:
            return _randint(generator, height - h), _randint(generator, width - w), h, w
    return None


def random_erase(
    clip: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
    area: Sequence[float] = (0.02, 1 / 3),
    aspect: Sequence[float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """With probability ``prob`` fill one box (the same in every frame) of a normalised float
    ``(3, T, H, W)`` clip with standard-normal noise; in place, returns ``clip``."""
    _, t, height, width = clip.shape
    box = erase_box(prob, height, width, generator, area, aspect)
    if box is not None:
        top, left, h, w = box
        clip[:, :, top : top + h, left : left + w] = torch.randn((3, t, h, w), generator=generator, dtype=clip.dtype)
    return clip


class ClipRandAugment:
    """RandAugment over a uint8 ``(T, 3, H, W)`` clip, one op sequence for all frames.

    ``config`` follows timm's spelling: ``rand-m{magnitude}[-n{num_ops}][-mstd{std}][-inc{0|1}][-p{prob}]``
    (defaults n=2, mstd=0, inc=0, p=0.5). Magnitudes are on timm's 0..10 scale.
    """

    _BASE_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
                 "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
                 "TranslateYRel")

    def __init__(self, config: str, fill: Sequence[int] | None = None):
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"rand_aug config must start with 'rand-', got {config!r}")
        self.magnitude, self.num_ops, self.magnitude_std, self.increasing, self.prob = 9.0, 2, 0.0, False, 0.5
        for part in parts[1:]:
            key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
            try:
                value = float(part[len(key):]) if key else None
            except ValueError:
                value = None
            if value is None:
                raise ValueError(f"rand_aug config {config!r}: cannot parse field {part!r}")
            if key == "m":
                self.magnitude = value
            elif key == "n":
                self.num_ops = int(value)
            elif key == "mstd":
                self.magnitude_std = value
            elif key == "inc":
                self.increasing = bool(value)
            else:
                self.prob = value
        self.fill = list(fill) if fill is not None else [128, 128, 128]

    def _apply(self, op: str, clip: torch.Tensor, level: float, sign: float) -> torch.Tensor:
        frac = level / 10.0
        if op == "AutoContrast":
            return TF.autocontrast(clip)
        if op == "Equalize":
            return TF.equalize(clip)
        if op == "Invert":
            return TF.invert(clip)
        if op == "Rotate":
            return TF.rotate(clip, sign * 30.0 * frac, interpolation=InterpolationMode.BILINEAR, fill=self.fill)
        if op == "Posterize":
            bits = 4 - int(frac * 4) if self.increasing else int(frac * 4) + 4
            return TF.posterize(clip, max(0, min(8, bits)))
        if op == "Solarize":
            threshold = 256 - int(frac * 256) if self.increasing else int(frac * 256)
            return clip if threshold >= 256 else TF.solarize(clip, float(max(threshold, 0)))
        if op == "SolarizeAdd":
            added = (clip.to(torch.int16) + int(frac * 110)).clamp_(max=255).to(torch.uint8)
            return torch.where(clip < 128, added, clip)
        if op in ("Color", "Contrast", "Brightness", "Sharpness"):
            factor = 1.0 + sign * 0.9 * frac if self.increasing else 0.1 + 1.8 * frac
            fn = {"Color": TF.adjust_saturation, "Contrast": TF.adjust_contrast,
                  "Brightness": TF.adjust_brightness, "Sharpness": TF.adjust_sharpness}[op]
            return fn(clip, max(factor, 0.0))
        if op in ("ShearX", "ShearY"):
            degrees = math.degrees(math.atan(sign * 0.3 * frac))
            shear = [degrees, 0.0] if op == "ShearX" else [0.0, degrees]
            return TF.affine(clip, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                             interpolation=InterpolationMode.BILINEAR, fill=self.fill)
        # TranslateXRel / TranslateYRel: a fraction (up to 0.45) of the frame side
        h, w = clip.shape[-2:]
        if op == "TranslateXRel":
            shift = [int(round(sign * 0.45 * frac * w)), 0]
        else:
            shift = [0, int(round(sign * 0.45 * frac * h))]
        return TF.affine(clip, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.BILINEAR, fill=self.fill)

    def sample_ops(self, generator: torch.Generator | None = None) -> list[tuple[str, float, float]]:
        """The (op, level, sign) sequence of one clip; ops skipped by their probability are left out."""
        chosen = torch.randint(0, len(self._BASE_OPS), (self.num_ops,), generator=generator).tolist()
        ops = []
        for k in chosen:
            apply = torch.rand((), generator=generator).item() < self.prob
            noise = torch.randn((), generator=generator).item() * self.magnitude_std
            sign = 1.0 if torch.rand((), generator=generator).item() < 0.5 else -1.0
            if apply:
                ops.append((self._BASE_OPS[k], min(max(self.magnitude + noise, 0.0), 10.0), sign))
        return ops

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for op, level, sign in self.sample_ops(generator):
            clip = self._apply(op, clip, level, sign)
        return clip


class TrainTransform:
    """Pretraining / finetuning clip: random resized crop, flip, [RandAug], [random erasing]; normalising is the
    device's (``finishing.finish_clips``). ``fill`` is RandAug's fill colour (uint8 RGB: the mean pixel)."""

    def __init__(
        self,
        input_size: int,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        rand_aug: str | None = None,
        random_erase: float = 0.0,
        fill: Sequence[int] | None = None,
    ):
        self.input_size, self.scale, self.ratio, self.flip = input_size, tuple(scale), tuple(ratio), flip
        self.rand_aug = ClipRandAugment(rand_aug, fill=fill) if rand_aug else None
        self.random_erase = random_erase

    def _flip(self, generator: torch.Generator | None) -> bool:
        return self.flip and torch.rand((), generator=generator).item() < 0.5

    def _erase(self, generator: torch.Generator | None) -> tuple[int, int, int, int, int] | None:
        box = erase_box(self.random_erase, self.input_size, self.input_size, generator)
        if box is None:
            return None
        return (*box, int(torch.randint(0, 2**62, (), generator=generator).item()))

    def view(self, height: int, width: int, positions: Sequence[int],
             generator: torch.Generator | None = None) -> View:
        """The draws of one clip of ``height`` x ``width`` frames at ``positions`` (no RandAug): box, flip, erase."""
        box = sample_resized_crop_box(height, width, self.scale, self.ratio, generator)
        flip = self._flip(generator)
        return View(tuple(int(p) for p in positions), box, flip, self._erase(generator))

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Box]:
        """With RandAug: the worker's part of a clip, uint8 (T, S, S, 3) cropped, resized, flipped and augmented,
        and the crop box; ``erase_view`` draws the rest."""
        clip = as_tchw(frames)
        box = sample_resized_crop_box(clip.shape[-2], clip.shape[-1], self.scale, self.ratio, generator)
        clip = resized_crop(clip, box, self.input_size)
        if self._flip(generator):
            clip = hflip(clip)
        if self.rand_aug is not None:
            clip = self.rand_aug(clip, generator)
        return clip.permute(0, 2, 3, 1).contiguous(), box

    def erase_view(self, positions: Sequence[int], generator: torch.Generator | None = None) -> View:
        """The view of a clip the worker finished to S x S (``__call__``): only the erasing is left to draw."""
        s = self.input_size
        return View(tuple(int(p) for p in positions), (0, 0, s, s), False, self._erase(generator))


class EvalTransform:
    """Validation clip: shorter side to ``short_side_size``, centre ``input_size`` crop; uint8, normalised on the
    device (``finishing.normalize_batch``)."""

    def __init__(self, input_size: int, short_side_size: int, num_crops: int = 1):
        if short_side_size < input_size:
            raise ValueError(f"short_side_size ({short_side_size}) must be >= input_size ({input_size})")
        self.input_size, self.short_side_size, self.num_crops = input_size, short_side_size, num_crops

    def crops(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``num_crops`` uint8 ``(3, T, S, S)`` crops along the longer side of the resized clip."""
        clip = resize_short_side(frames, self.short_side_size)
        s = self.input_size
        offsets = spatial_crop_offsets(clip.shape[-2], clip.shape[-1], s, self.num_crops)
        return [clip[:, :, y : y + s, x : x + s].permute(1, 0, 2, 3).contiguous() for y, x in offsets]

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.crops(frames)[0] if self.num_crops == 1 else torch.stack(self.crops(frames))
