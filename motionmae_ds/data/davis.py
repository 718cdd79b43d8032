"""The DAVIS-2017 directory layout and its palette-PNG annotations.

    ROOT/JPEGImages/<res>/<seq>/00000.jpg       frames (res: 480p, or Full-Resolution)
    ROOT/Annotations/<res>/<seq>/00000.png      label maps: palette ("P") PNGs, pixel value = object id
    ROOT/ImageSets/2017/<split>.txt             one sequence name per line

Results go to ``OUT/<seq>/<frame>.png`` in the same palette format (DAVIS's results layout). An
annotation is read as its raw palette indices, never through the colours, so reading a file and writing
it back keeps its labels and its palette byte for byte.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

FRAME_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
SPLIT_DIR = Path("ImageSets") / "2017"
DEFAULT_RESOLUTION = "480p"


class DavisLayoutError(ValueError):
    """A DAVIS root that does not hold what the layout promises; one line naming the path."""


def davis_palette() -> bytes:
    """The 256-colour palette of DAVIS (and PASCAL VOC) annotations: id 0 black, 1 red, 2 green, 3 yellow...
    Each id's bits are spread over the three channels, most significant bit first."""
    out = bytearray()
    for label in range(256):
        rgb, value = [0, 0, 0], label
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        out.extend(rgb)
    return bytes(out)


def read_annotation(path: str | Path) -> tuple[np.ndarray, bytes]:
    """(labels uint8 (H, W), palette as RGB bytes) of a palette PNG."""
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                raise DavisLayoutError(f"{path}: annotation is a {image.mode!r} image, not a palette PNG")
            labels = np.array(image, dtype=np.uint8)
            palette = bytes(image.getpalette("RGB") or b"")
    except (OSError, SyntaxError) as exc:
        raise DavisLayoutError(f"{path}: cannot be read as a PNG ({exc})") from None
    return labels, palette


def write_annotation(path: str | Path, labels: np.ndarray, palette: bytes) -> None:
    """Write ``labels`` (uint8 (H, W) object ids) as a palette PNG, under a temporary name and renamed."""
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 (H, W), got {labels.dtype} {labels.shape}")
    if len(palette) % 3 or not 3 <= len(palette) <= 768:
        raise ValueError(f"palette must hold 1..256 RGB triples, got {len(palette)} bytes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(palette, rawmode="RGB")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def read_frame(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB of one JPEG frame."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise DavisLayoutError(f"{path}: cannot be read as an image ({exc})") from None


@dataclass
class DavisSequence:
    name: str
    frames: list[Path]                  # every frame, in order
    annotations: list[Optional[Path]]   # the annotation of each frame, None where there is none

    @property
    def first_annotation(self) -> Path:
        return self.annotations[0]  # type: ignore[return-value]

    @property
    def fully_annotated(self) -> bool:
        """True when every frame has ground truth (val), so the propagated masks can be scored."""
        return all(a is not None for a in self.annotations)


def read_split(root: str | Path, split: str = "val") -> list[str]:
    """The sequence names of ``ImageSets/2017/<split>.txt``."""
    path = Path(root) / SPLIT_DIR / f"{split}.txt"
    if not path.is_file():
        raise DavisLayoutError(f"{path}: split file not found (is {root} a DAVIS-2017 root?)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DavisLayoutError(f"{path}: lists no sequences")
    return names


def read_sequences(root: str | Path, split: str = "val", resolution: str = DEFAULT_RESOLUTION
                   ) -> list[DavisSequence]:
    """Every sequence of ``split`` with its frames and annotations; the first frame must be annotated."""
    root = Path(root)
    out = []
    for number, name in enumerate(read_split(root, split), start=1):
        frame_dir = root / FRAME_DIR / resolution / name
        ann_dir = root / ANNOTATION_DIR / resolution / name
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise DavisLayoutError(f"{root / SPLIT_DIR / (split + '.txt')}:{number}: sequence {name}: "
                                   f"no frames in {frame_dir}")
        annotations = [ann_dir / f"{f.stem}.png" for f in frames]
        annotations = [a if a.is_file() else None for a in annotations]
        if annotations[0] is None:
            raise DavisLayoutError(f"{ann_dir / (frames[0].stem + '.png')}: the first frame of {name} has no "
                                   f"annotation")
        out.append(DavisSequence(name, frames, annotations))
    return out


def write_split(root: str | Path, split: str, names: list[str]) -> Path:
    path = Path(root) / SPLIT_DIR / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names))
    return path
