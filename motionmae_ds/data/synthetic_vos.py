"""The embedded video-object-segmentation set: textured shapes moving over textured backgrounds, in the
DAVIS-2017 layout (``data/davis.py``), with exact masks. Generated once and cached.

Each sequence has a background of two coloured gratings or checkerboards drifting slowly (a camera pan) and
2-3 objects (discs, squares, ellipses) with their own texture, carried along in object coordinates. Objects
bounce off the frame's edges at constant speed and are drawn in a fixed depth order, so they pass in front
of one another: every sequence has at least one occlusion, and no object is ever hidden by more than half
(trajectories are redrawn until both hold), so the first frame's masks stay propagatable. The masks are
the renderer's own coverage maps, exact to the pixel. Frames are JPEGs (quality 95), annotations palette
PNGs with DAVIS's palette; ``ImageSets/2017/val.txt`` lists the sequences.

Sizes scale with the frame: object radius 10-16% and speed up to 1.2% of the shorter side per frame. The
result is a function of the parameters (the seed included); a manifest records them and a call with the
same parameters reuses the set. It is written to a temporary directory that is renamed into place, so a
reader never sees half a set.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .davis import ANNOTATION_DIR, DEFAULT_RESOLUTION, FRAME_DIR, davis_palette, write_annotation, write_split

MANIFEST = "manifest.json"
VERSION = 1
DEFAULTS = dict(num_sequences=8, num_frames=30, height=192, width=320, seed=0)
_MAX_HIDDEN = 0.5        # no object is ever hidden by more than this fraction of its area
_SHAPES = ("disc", "square", "ellipse")


def _pattern(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """float (..., 3): a soft grating or checkerboard in two random colours, in coordinates (u, v)."""
    a, b = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    w = 2 * np.pi / period
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, np.pi)
        wave = np.sin((u * np.cos(angle) + v * np.sin(angle)) * w)
    else:
        wave = np.sin(u * w) * np.sin(v * w)
    pick = (0.5 + 0.5 * np.tanh(2.5 * wave))[..., None]
    return (pick * a + (1 - pick) * b).astype(np.float32)


def _trajectory(rng: np.random.Generator, num_frames: int, height: int, width: int, radius: float
                ) -> np.ndarray:
    """(T, 2) centres (x, y): constant speed towards the frame's middle (with jitter), bouncing off the edges."""
    side = min(height, width)
    pos = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    to_middle = np.array([width / 2, height / 2]) - pos
    angle = np.arctan2(to_middle[1], to_middle[0]) + rng.uniform(-0.6, 0.6)
    vel = rng.uniform(0.4, 1.0) * 0.012 * side * np.array([np.cos(angle), np.sin(angle)])
    low, high = np.array([radius, radius]), np.array([width - radius, height - radius])
    out = np.empty((num_frames, 2))
    for t in range(num_frames):
        out[t] = pos
        pos = pos + vel
        for axis in range(2):  # reflect at the edges
            if pos[axis] < low[axis]:
                pos[axis], vel[axis] = 2 * low[axis] - pos[axis], -vel[axis]
            elif pos[axis] > high[axis]:
                pos[axis], vel[axis] = 2 * high[axis] - pos[axis], -vel[axis]
    return out


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    if shape == "disc":
        return dx**2 + dy**2 <= radius**2
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    if shape == "square":
        return (np.abs(u) <= 0.85 * radius) & (np.abs(v) <= 0.85 * radius)
    return (u / radius) ** 2 + (v / (0.6 * radius)) ** 2 <= 1.0


def render_sequence(rng: np.random.Generator, num_frames: int, height: int, width: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (T, H, W, 3), labels uint8 (T, H, W)); object ids 1..K, K in 2..3, 0 background."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    drift = rng.uniform(-0.3, 0.3, 2) * side / 96
    background = 0.8 * _pattern(rng, xx[None] - drift[0] * t, yy[None] - drift[1] * t, rng.uniform(0.15, 0.3) * side)
    background += 0.2 * _pattern(rng, xx[None], yy[None], rng.uniform(0.04, 0.08) * side)
    count = int(rng.integers(2, 4))
    for _attempt in range(200):
        objects = []
        for _ in range(count):
            radius = rng.uniform(0.10, 0.16) * side
            shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
            objects.append(dict(radius=radius, shape=shape, angle=rng.uniform(0, np.pi),
                                centres=_trajectory(rng, num_frames, height, width, radius)))
        full = []
        for obj in objects:
            dx = xx[None] - obj["centres"][:, 0, None, None]
            dy = yy[None] - obj["centres"][:, 1, None, None]
            obj["dx"], obj["dy"] = dx, dy
            full.append(_coverage(obj["shape"], dx, dy, obj["radius"], obj["angle"]))
        labels = np.zeros((num_frames, height, width), dtype=np.uint8)
        for k, inside in enumerate(full, start=1):  # later objects are in front
            labels[inside] = k
        area = np.stack([m.sum(axis=(1, 2)) for m in full])                    # (K, T)
        visible = np.stack([(labels == k).sum(axis=(1, 2)) for k in range(1, count + 1)])
        hidden = 1.0 - visible / np.maximum(area, 1)
        if hidden.max() <= _MAX_HIDDEN and hidden.max() > 0.05:
            break
    else:  # pragma: no cover - a deterministic function of the seed; reached only by pathological sizes
        raise ValueError(f"no occluding trajectories found for a {height}x{width} frame")
    frames = background.copy()
    for k, obj in enumerate(objects, start=1):
        texture = _pattern(rng, obj["dx"], obj["dy"], rng.uniform(0.5, 1.0) * obj["radius"])
        frames = np.where((labels == k)[..., None], texture, frames)
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8), labels


def _params(num_sequences: int, num_frames: int, height: int, width: int, seed: int) -> dict:
    return {"version": VERSION, "num_sequences": num_sequences, "num_frames": num_frames, "height": height,
            "width": width, "seed": seed}


def _is_complete(root: Path, params: dict) -> bool:
    try:
        return json.loads((root / MANIFEST).read_text()).get("params") == params
    except (OSError, ValueError):
        return False


def ensure_synthetic_vos(cache_root: str | os.PathLike, num_sequences: Optional[int] = None,
                         num_frames: Optional[int] = None, height: Optional[int] = None,
                         width: Optional[int] = None, seed: Optional[int] = None) -> Path:
    """The DAVIS-layout root of the set with these parameters (defaults: ``DEFAULTS``), made on first use."""
    given = dict(num_sequences=num_sequences, num_frames=num_frames, height=height, width=width, seed=seed)
    p = {k: int(DEFAULTS[k] if v is None else v) for k, v in given.items()}
    if p["num_sequences"] < 1 or p["num_frames"] < 3:
        raise ValueError(f"need >= 1 sequence of >= 3 frames, got {p['num_sequences']} x {p['num_frames']}")
    if min(p["height"], p["width"]) < 32:
        raise ValueError(f"frames must be at least 32 x 32, got {p['height']} x {p['width']}")
    params = _params(**p)
    custom = [f"{k}{v}" for k, v in p.items() if v != DEFAULTS[k]]
    root = Path(cache_root).resolve() / "_".join(["synthetic_vos", *custom])
    if _is_complete(root, params):
        return root
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    palette = davis_palette()
    names = [f"seq_{i:03d}" for i in range(p["num_sequences"])]
    for i, name in enumerate(names):
        rng = np.random.default_rng([p["seed"], i])
        frames, labels = render_sequence(rng, p["num_frames"], p["height"], p["width"])
        frame_dir = tmp / FRAME_DIR / DEFAULT_RESOLUTION / name
        frame_dir.mkdir(parents=True)
        for t in range(p["num_frames"]):
            Image.fromarray(frames[t]).save(frame_dir / f"{t:05d}.jpg", quality=95)
            write_annotation(tmp / ANNOTATION_DIR / DEFAULT_RESOLUTION / name / f"{t:05d}.png", labels[t], palette)
    write_split(tmp, "val", names)
    (tmp / MANIFEST).write_text(json.dumps({"params": params}, indent=1))
    if root.exists():  # an older or interrupted set under the same name
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:  # another process renamed its identical set into place first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(root, params):
            raise
    return root
