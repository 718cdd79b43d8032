"""The embedded default data: small, real H.264 MP4 files of moving textured shapes, made on first use.

Two kinds:
- ``pretrain``: each video has a drifting, softly textured background of one colour and 2-3 softly textured
  shapes, each with its own velocity; the motion is what a model has to predict from few visible patches.
  Returns the list file.
- ``motion_classes``: 4 classes told apart only by motion - every shape in the clip moves right (0), left
  (1), down (2) or up (3) at a random speed over a static background; textures, colours, shapes and sizes
  are random per clip, so a single frame carries no class information. Returns ``{"train", "val",
  "test"}`` -> list file (75% / 12.5% / 12.5% of the videos, classes balanced).

Shapes move on a torus (they leave one side and enter the other) so the direction never reverses.
The rendered frames are a function of the seed. The encoded bytes are not guaranteed: libx264 here gave a
slightly different stream for the same frames in about 1 of 40 runs (single-threaded, explicit pts), so
tests compare decoded frames with a tolerance.
A manifest records the parameters; a call with the same parameters reuses the files. Files are written
under a temporary name and renamed, so a reader never sees half a video and concurrent callers (several
ranks) at worst do the work twice.
List files are VideoMAE's ``path label`` with absolute paths (pretraining ignores the label, which is 0).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

MANIFEST_VERSION = 4
KINDS = ("pretrain", "motion_classes")
_DEFAULTS = {"pretrain": (64, 32, 96), "motion_classes": (320, 32, 64)}  # videos, frames, size
NUM_MOTION_CLASSES = 4
_DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))  # (dx, dy) per class


def _texture(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, period: float) -> np.ndarray:
    """float (..., 3) in [0, 1]: soft stripes or a soft checkerboard in a random colour and a darker shade, in object
    coordinates. ``period`` (pixels) keeps the pattern coarse next to a 16 x 16 patch, so that a patch is
    mostly predictable from its neighbours, as in natural video, rather than per-pixel noise."""
    a = rng.uniform(0, 1, 3).astype(np.float32)
    b = (a * rng.uniform(0.3, 0.7)).astype(np.float32)  # a darker shade: one dominant hue per object
    w = 2 * np.pi / period
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, np.pi)
        wave = np.sin((dx * np.cos(angle) + dy * np.sin(angle)) * w)
    else:
        wave = np.sin(dx * w) * np.sin(dy * w)
    pick = (0.5 + 0.5 * np.tanh(3.0 * wave)).astype(np.float32)[..., None]
    return pick * a + (1 - pick) * b


def _sharp_texture(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """float (..., 3): hard-edged stripes or checkerboard in two independent random colours, period 3-9
    pixels: fine detail whose displacement from frame to frame is what tells the classes apart."""
    a, b = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    period = rng.uniform(3.0, 9.0)
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, np.pi)
        pick = np.sin((dx * np.cos(angle) + dy * np.sin(angle)) * (2 * np.pi / period)) > 0
    else:
        pick = (np.floor(dx / period) + np.floor(dy / period)) % 2 == 0
    return np.where(pick[..., None], a, b)


def _moving_shape(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, t: np.ndarray, size: int,
                  centre: tuple[float, float], velocity: tuple[float, float], radius: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: offsets (dx, dy) of every pixel from a disc's or square's moving centre, and which pixels it
    covers. Offsets wrap around the torus, so a shape leaving one edge enters at the other."""
    dx = (xx[None] - (centre[0] + velocity[0] * t) + size / 2) % size - size / 2
    dy = (yy[None] - (centre[1] + velocity[1] * t) + size / 2) % size - size / 2
    if rng.uniform() < 0.5:
        return dx, dy, dx**2 + dy**2 <= radius**2
    return dx, dy, (np.abs(dx) <= radius) & (np.abs(dy) <= radius)


def _render(rng: np.random.Generator, num_frames: int, size: int, direction: tuple[float, float] | None) -> np.ndarray:
    """uint8 (T, size, size, 3). ``direction`` None: free motion (pretrain); else the class's unit vector."""
    if direction is not None:
        return _render_classes(rng, num_frames, size, direction)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Background: one colour per clip, shaded by a gentle gradient and a broad low-contrast grating that
    # drifts slowly (a camera pan). Soft, coarse textures: a masked patch is largely predictable from its
    # neighbours, as in natural video, so reconstructions become recognisable within a short run.
    drift = rng.uniform(-0.5, 0.5, 2)
    bx, by = xx[None] - drift[0] * t, yy[None] - drift[1] * t
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx * np.cos(angle) + yy * np.sin(angle)) / size)[None, ..., None]
    base = rng.uniform(0.1, 0.9, 3)
    frames = base + 0.15 * ramp + 0.25 * (_texture(rng, bx, by, rng.uniform(0.3, 0.6) * size) - 0.5)
    frames = np.broadcast_to(frames, (num_frames, size, size, 3)).copy()

    for _ in range(int(rng.integers(2, 4))):
        radius = rng.uniform(0.12, 0.22) * size
        cx0, cy0 = rng.uniform(0, size, 2)
        speed, angle = rng.uniform(0.5, 3.0) * size / 64, rng.uniform(0, 2 * np.pi)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        dx, dy, inside = _moving_shape(rng, xx, yy, t, size, (cx0, cy0), (vx, vy), radius)
        frames = np.where(inside[..., None], _texture(rng, dx, dy, rng.uniform(0.6, 1.2) * radius), frames)
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _render_classes(rng: np.random.Generator, num_frames: int, size: int, direction: tuple[float, float]) -> np.ndarray:
    """A motion_classes clip: a still background of fine texture and 2-4 finely textured shapes, all moving
    along ``direction`` at their own speed. Appearance is random per clip; only the motion is the class."""
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = 0.35 * _sharp_texture(rng, xx[None], yy[None]) + 0.15 * rng.uniform(0, 1, 3).astype(np.float32)
    frames = np.broadcast_to(frames, (num_frames, size, size, 3)).copy()
    for _ in range(int(rng.integers(2, 5))):
        radius = rng.uniform(0.1, 0.2) * size
        cx0, cy0 = rng.uniform(0, size, 2)
        speed = rng.uniform(1.5, 3.0) * size / 64
        vx, vy = speed * direction[0], speed * direction[1]
        dx, dy, inside = _moving_shape(rng, xx, yy, t, size, (cx0, cy0), (vx, vy), radius)
        frames = np.where(inside[..., None], _sharp_texture(rng, dx, dy), frames)
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _encode(frames: np.ndarray, path: Path, fps: int) -> None:
    """Write an H.264 (yuv420p) MP4 under a temporary name, then rename it into place."""
    import av

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _splits(labels: list[int]) -> dict[str, list[int]]:
    """Video indices per split: every 8th video of each class to val, the next to test, rest to train."""
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i in range(len(labels)):
        rank = i // NUM_MOTION_CLASSES  # labels cycle through the classes, so rank counts within a class
        out["val" if rank % 8 == 6 else "test" if rank % 8 == 7 else "train"].append(i)
    return out


def ensure_synthetic_dataset(
    root: str | os.PathLike,
    kind: str = "pretrain",
    num_videos: int | None = None,
    num_frames: int | None = None,
    size: int | None = None,
    seed: int = 0,
    fps: int = 25,
) -> str | dict[str, str]:
    """Make (or reuse) the synthetic set under ``root/kind``; see the module docstring for what it holds.

    Defaults: pretrain 64 videos x 32 frames at 96x96; motion_classes 320 videos x 32 frames at 64x64.
    Returns the list file (pretrain) or ``{"train", "val", "test"}`` -> list file (motion_classes).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic dataset kind {kind!r}; one of {', '.join(KINDS)}")
    d_videos, d_frames, d_size = _DEFAULTS[kind]
    num_videos = d_videos if num_videos is None else int(num_videos)
    num_frames = d_frames if num_frames is None else int(num_frames)
    size = d_size if size is None else int(size)
    if num_videos < (8 * NUM_MOTION_CLASSES if kind == "motion_classes" else 1):
        raise ValueError(f"num_videos too small for kind {kind!r}: {num_videos}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")

    out_dir = Path(root).resolve() / kind
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"version": MANIFEST_VERSION, "kind": kind, "num_videos": num_videos, "num_frames": num_frames,
              "size": size, "seed": seed, "fps": fps}
    names = [f"video_{i:05d}.mp4" for i in range(num_videos)]
    labels = [i % NUM_MOTION_CLASSES if kind == "motion_classes" else 0 for i in range(num_videos)]

    manifest_path = out_dir / "manifest.json"
    cached = False
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        cached = manifest.get("params") == params and all(
            (out_dir / n).is_file() and (out_dir / n).stat().st_size == s for n, s in manifest.get("files", [])
        ) and len(manifest.get("files", [])) == num_videos
    if not cached:
        manifest_path.unlink(missing_ok=True)  # an interrupted regeneration must not look complete
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, KINDS.index(kind), i])
            direction = _DIRECTIONS[labels[i]] if kind == "motion_classes" else None
            _encode(_render(rng, num_frames, size, direction), out_dir / name, fps)
        files = [[n, (out_dir / n).stat().st_size] for n in names]
        _write_text(manifest_path, json.dumps({"params": params, "files": files}, indent=1))

    def write_list(list_name: str, indices: list[int]) -> str:
        path = out_dir / list_name
        _write_text(path, "".join(f"{out_dir / names[i]} {labels[i]}\n" for i in indices))
        return str(path)

    if kind == "pretrain":
        return write_list("train.txt", list(range(num_videos)))
    return {split: write_list(f"{split}.txt", idx) for split, idx in _splits(labels).items()}
