"""Video object segmentation with a frozen encoder: label propagation (the protocol of Jabri et al. 2020, as
DINO and MAE-ST evaluate on DAVIS-2017).

Each frame becomes a grid of L2-normalised patch features (``frame_features``): a tubelet-2 encoder sees two
frames per token slice, so frame t is paired with its successor (``pairing="successor"``; the last frame with
itself) or duplicated (``"duplicate"``), resized so that both sides are multiples of the patch size, and the
position table is rebuilt for that grid (the project's rule for a new resolution). The first frame's
annotation, area-averaged to the grid, is the initial soft label map. For every later frame t
(``propagate``), the context is the first frame and the last ``context_frames`` frames; each query position
takes its ``topk`` most similar context positions within ``radius`` grid cells (Euclidean), softmaxes their
similarities / ``temperature`` and averages their soft labels. The soft maps are upsampled bilinearly to the
full frame and the argmax is the prediction, written as palette PNGs in DAVIS's results layout and scored
with J and F (``eval/vos_metrics.py``). Defaults are CRW's: 20 frames, top-10, radius 12, temperature 0.05.
For a person to look at, the first frames of each sequence also become overlays: the frame, the prediction and
the ground truth side by side, each mask blended over the frame in its palette colour.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from motionmae_ds.builders import cache_dir
from motionmae_ds.config import ConfigError, FinetuneConfig
from motionmae_ds.data.davis import (
    DavisLayoutError,
    DavisSequence,
    read_annotation,
    read_frame,
    read_sequences,
    write_annotation,
)
from motionmae_ds.data.synthetic_vos import ensure_synthetic_vos
from motionmae_ds.eval.features import load_frozen_encoder
from motionmae_ds.eval.vos_metrics import SequenceScores, summarize
from motionmae_ds.models.pos_embed import build_pos_table
from motionmae_ds.models.vit import VisionTransformerEncoder
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cpu_process import tune_cpu_process

PAIRINGS = ("successor", "duplicate")
OVERLAY_FRAMES = 5     # overlays of each sequence's first frames
OVERLAY_ALPHA = 0.5    # an object pixel of an overlay: (1 - alpha) x frame + alpha x its palette colour
OVERLAY_GAP = 4        # white columns between the three panels
# query x key similarities held at once while propagating one frame
_CHUNK_ELEMENTS = 1 << 23


@dataclass
class PropagationSettings:
    context_frames: int = 20     # n: the last n frames, beside the first one
    topk: int = 10
    radius: float = 12.0         # in feature-grid cells
    temperature: float = 0.05
    pairing: str = "successor"   # how a frame meets the tubelet-2 embedding
    short_side: int = 0          # frames resized to this shorter side before the encoder (0: as they are)
    batch_frames: int = 8        # frames per encoder forward

    def validate(self) -> "PropagationSettings":
        for name in ("context_frames", "topk", "batch_frames"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.radius > 0:
            raise ConfigError(f"--radius must be > 0, got {self.radius}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"--pairing {self.pairing!r} is not one of {', '.join(PAIRINGS)}")
        if self.short_side < 0:
            raise ConfigError(f"--short_side must be >= 0, got {self.short_side}")
        return self


# -- features ---------------------------------------------------------------------------------------------

def encode_tokens(encoder: VisionTransformerEncoder, clips: torch.Tensor) -> torch.Tensor:
    """(B, t, h, w, D) final tokens of normalised clips (B, 3, T, H, W) of any size the patches divide."""
    x = encoder.patch_embed.proj(clips.to(encoder.patch_embed.proj.weight.dtype))   # (B, D, t, h, w)
    grid = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    x = x + build_pos_table(encoder.pos_embed_kind, grid, x.shape[-1]).to(x.device, x.dtype)
    x = encoder.norm(encoder.run_blocks(x))
    return x.reshape(x.shape[0], *grid, x.shape[-1])


def _model_size(height: int, width: int, patch: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(height, width) if short_side else 1.0
    return (max(patch, round(height * scale / patch) * patch), max(patch, round(width * scale / patch) * patch))


@torch.no_grad()
def frame_features(encoder: VisionTransformerEncoder, frames: np.ndarray, settings: PropagationSettings,
                   mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(T, h, w, D) L2-normalised features of uint8 frames (T, H, W, 3), one token slice per frame."""
    patch = encoder.patch_embed.proj.kernel_size[1]
    tubelet = encoder.patch_embed.proj.kernel_size[0]
    size = _model_size(frames.shape[1], frames.shape[2], patch, settings.short_side)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    count = frames.shape[0]
    out = []
    for start in range(0, count, settings.batch_frames):
        idx = torch.arange(start, min(start + settings.batch_frames, count))
        x = torch.from_numpy(frames[start: start + len(idx)]).to(device).permute(0, 3, 1, 2).float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - m) / s                                                     # (b, 3, H, W)
        if settings.pairing == "successor":
            nxt = torch.clamp(idx + 1, max=count - 1)
            x_next = torch.from_numpy(frames[nxt.numpy()]).to(device).permute(0, 3, 1, 2).float() / 255.0
            if tuple(x_next.shape[-2:]) != size:
                x_next = F.interpolate(x_next, size=size, mode="bilinear", align_corners=False, antialias=True)
            slices = [x] + [(x_next - m) / s] * (tubelet - 1)
        else:
            slices = [x] * tubelet
        clips = torch.stack(slices, dim=2)                                  # (b, 3, tubelet, H, W)
        with dist_utils.inference_precision(device):                       # bf16 on an accelerator, fp32 on CPU
            tokens = encode_tokens(encoder, clips)[:, 0].float()            # (b, h, w, D)
        out.append(F.normalize(tokens, dim=-1).cpu())
    return torch.cat(out)


# -- propagation ------------------------------------------------------------------------------------------

def soft_labels(labels: np.ndarray, num_labels: int, size: tuple[int, int]) -> torch.Tensor:
    """(L, h, w): each grid cell's share of every label of a (H, W) map of indices 0..L-1."""
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), num_labels).permute(2, 0, 1).float()
    if tuple(onehot.shape[-2:]) == tuple(size):
        return onehot
    return F.interpolate(onehot[None], size=size, mode="area")[0]


def propagate_frame(query: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                    settings: PropagationSettings) -> torch.Tensor:
    """Soft labels (L, h, w) of one frame from context frames: query (h, w, D), keys (C, h, w, D),
    key_labels (C, L, h, w)."""
    h, w, d = query.shape
    context, num_labels = key_labels.shape[:2]
    r2 = settings.radius ** 2
    band = int(math.floor(settings.radius))
    rows = torch.arange(h, dtype=torch.float32)
    dx2 = (torch.arange(w, dtype=torch.float32)[:, None] - torch.arange(w, dtype=torch.float32)[None]) ** 2
    labels = key_labels.permute(0, 2, 3, 1)                                 # (C, h, w, L)
    out = torch.empty(num_labels, h, w)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, w * context * w * (2 * band + 2)))
    for y0 in range(0, h, rows_per_chunk):
        y1 = min(h, y0 + rows_per_chunk)
        k0, k1 = max(0, y0 - band), min(h, y1 + band)                   # key rows any query here can reach
        qr, kr = y1 - y0, k1 - k0
        logits = (query[y0:y1].reshape(-1, d) @ keys[:, k0:k1].reshape(-1, d).T) / settings.temperature
        dy2 = (rows[y0:y1, None] - rows[None, k0:k1]) ** 2                # (qr, kr)
        near = (dy2[:, None, None, :, None] + dx2[None, :, None, None, :]) <= r2   # (qr, w, 1, kr, w)
        logits = logits.view(qr, w, context, kr, w).masked_fill_(~near, float("-inf")).view(qr * w, -1)
        top = logits.topk(min(settings.topk, logits.shape[1]), dim=1)
        weights = torch.softmax(top.values, dim=1)                       # -inf (fewer neighbours) -> 0
        picked = labels[:, k0:k1].reshape(-1, num_labels)[top.indices]  # (Q, k, L)
        out[:, y0:y1] = (weights[..., None] * picked).sum(dim=1).T.reshape(num_labels, qr, w)
    return out


def propagate(features: torch.Tensor, first: torch.Tensor, settings: PropagationSettings) -> list[torch.Tensor]:
    """Soft label maps (L, h, w) of every frame: ``features`` (T, h, w, D), ``first`` (L, h, w)."""
    maps = [first]
    for t in range(1, features.shape[0]):
        context = [0] + list(range(max(1, t - settings.context_frames), t))
        maps.append(propagate_frame(features[t], features[context], torch.stack([maps[c] for c in context]),
                                    settings))
    return maps


def to_label_map(soft: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Indices (H, W) uint8 of a soft map (L, h, w) upsampled bilinearly to ``size``."""
    if tuple(soft.shape[-2:]) != tuple(size):
        soft = F.interpolate(soft[None], size=size, mode="bilinear", align_corners=False)[0]
    return soft.argmax(dim=0).to(torch.uint8).numpy()


# -- overlays ---------------------------------------------------------------------------------------------

def blend(frame: np.ndarray, labels: np.ndarray, palette: bytes, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3): ``frame`` with every object pixel (label > 0) mixed with its palette colour; background
    pixels stay the frame's."""
    colours = np.frombuffer(palette.ljust(768, b"\0")[:768], dtype=np.uint8).reshape(256, 3).astype(np.float32)
    out = frame.astype(np.float32)
    objects = labels > 0
    out[objects] = (1.0 - alpha) * out[objects] + alpha * colours[labels[objects]]
    return np.floor(out + 0.5).astype(np.uint8)


def write_overlay(path: Path, frame: np.ndarray, pred: np.ndarray, truth: Optional[np.ndarray],
                  palette: bytes) -> None:
    """frame | prediction | ground truth (the bare frame where there is none), as one RGB PNG, written under a
    temporary name and renamed."""
    gap = np.full((frame.shape[0], OVERLAY_GAP, 3), 255, dtype=np.uint8)
    gt_panel = blend(frame, truth, palette) if truth is not None else frame
    image = np.concatenate([frame, gap, blend(frame, pred, palette), gap, gt_panel], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


# -- sequences --------------------------------------------------------------------------------------------

FeatureFn = Callable[[np.ndarray, DavisSequence], torch.Tensor]


def segment_sequence(seq: DavisSequence, features_of: FeatureFn, settings: PropagationSettings,
                     out_dir: Optional[Path], overlay_dir: Optional[Path] = None,
                     overlay_frames: int = 0) -> Optional[SequenceScores]:
    """Propagate ``seq``'s first annotation; write the masks under ``out_dir/<seq>/`` (if given), overlays of the
    first ``overlay_frames`` frames under ``overlay_dir/<seq>/`` (if given) and score the masks against the
    ground truth of every frame but the first and last (None without full annotations)."""
    first, palette = read_annotation(seq.first_annotation)
    ids = np.unique(first)
    ids = ids if ids[0] == 0 else np.concatenate([[0], ids])                # index 0 is the background
    lookup = np.zeros(256, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    frames = np.stack([read_frame(p) for p in seq.frames])
    if frames.shape[1:3] != first.shape:
        raise ConfigError(f"{seq.first_annotation}: {first.shape} does not match its frame {frames.shape[1:3]}")
    feats = features_of(frames, seq)
    maps = propagate(feats, soft_labels(lookup[first], len(ids), tuple(feats.shape[1:3])), settings)
    preds = [ids[to_label_map(m, first.shape)].astype(np.uint8) for m in maps]
    preds[0] = first
    if out_dir is not None:
        for path, pred in zip(seq.frames, preds):
            write_annotation(out_dir / seq.name / f"{path.stem}.png", pred, palette)
    if overlay_dir is not None:
        for t in range(min(overlay_frames, len(preds))):
            truth = read_annotation(seq.annotations[t])[0] if seq.annotations[t] is not None else None
            write_overlay(overlay_dir / seq.name / f"{seq.frames[t].stem}.png", frames[t], preds[t], truth, palette)
    if not seq.fully_annotated or len(preds) < 3:
        return None
    scores = SequenceScores(seq.name)
    truths = {t: read_annotation(seq.annotations[t])[0] for t in range(1, len(preds) - 1)}
    objects = sorted({int(o) for o in ids if o} | {int(o) for g in truths.values() for o in np.unique(g) if o})
    for t, gt in truths.items():
        scores.add_frame(preds[t], gt, objects)
    return scores


def evaluate_sequences(sequences: list[DavisSequence], features_of: FeatureFn, settings: PropagationSettings,
                       out_dir: Optional[Path], desc: str = "sequences", overlay_frames: int = OVERLAY_FRAMES) -> dict:
    """Segment and score every sequence; ``out_dir`` gets ``results/<seq>/*.png`` (the masks),
    ``overlays/<seq>/*.png`` (frame | prediction | ground truth of the first ``overlay_frames`` frames) and
    ``metrics.json``."""
    settings.validate()
    scored = []
    results = out_dir / "results" if out_dir is not None else None
    overlays = out_dir / "overlays" if out_dir is not None and overlay_frames > 0 else None
    for seq in tqdm(sequences, desc=desc):
        scores = segment_sequence(seq, features_of, settings, results, overlays, overlay_frames)
        if scores is not None:
            scored.append(scores)
    metrics = summarize(scored)
    metrics["settings"] = asdict(settings)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def encoder_features(encoder: VisionTransformerEncoder, settings: PropagationSettings, mean: tuple[float, ...],
                     std: tuple[float, ...], device: torch.device) -> FeatureFn:
    """The ``features_of`` of ``evaluate_sequences`` for a frozen encoder."""
    return lambda frames, _seq: frame_features(encoder, frames, settings, mean, std, device)


# -- the job ----------------------------------------------------------------------------------------------

def vos_sequences(cfg: FinetuneConfig, davis_root: Optional[str], split: str, resolution: str
                  ) -> tuple[list[DavisSequence], str]:
    """(sequences, where they came from): a DAVIS-2017 root, or the embedded synthetic set (made once)."""
    if davis_root is None:
        root = ensure_synthetic_vos(cache_dir(cfg))
        return read_sequences(root, "val"), f"synthetic VOS set {root}"
    try:
        return read_sequences(davis_root, split, resolution), f"DAVIS {davis_root} ({split}, {resolution})"
    except DavisLayoutError as exc:
        raise ConfigError(f"--davis: {exc}") from None


def run_vos_evaluation(cfg: FinetuneConfig, sources: dict[str, Optional[str]], sequences: list[DavisSequence],
                       settings: PropagationSettings, out_dir: str | Path,
                       overlay_frames: int = OVERLAY_FRAMES) -> dict[str, dict]:
    """Label propagation with each encoder of ``sources`` (name -> weight source, None = random init);
    ``out_dir/<name>/`` gets the masks (``results/``), the overlays of each sequence's first ``overlay_frames``
    frames (``overlays/``) and ``metrics.json``. Returns name -> metrics."""
    settings.validate()
    tune_cpu_process()
    device = dist_utils.device()
    encoders = {name: load_frozen_encoder(cfg, source, cfg.run.seed) for name, source in sources.items()}
    out = {}
    for name, (encoder, message) in encoders.items():
        print(f"{name}: {message}", flush=True)
        features_of = encoder_features(encoder.to(device), settings, cfg.data.mean, cfg.data.std, device)
        metrics = evaluate_sequences(sequences, features_of, settings, Path(out_dir) / name, desc=name,
                                     overlay_frames=overlay_frames)
        metrics["encoder"] = message
        (Path(out_dir) / name / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        out[name] = metrics
    return out


def report_lines(results: dict[str, dict]) -> list[str]:
    """A table: per encoder J&F-Mean, J-Mean, F-Mean overall, then per sequence."""
    names = list(results)
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':<{width}}  {'J&F':>6} {'J':>6} {'F':>6}"]
    for n in names:
        m = results[n]
        if "J&F" not in m:
            lines.append(f"{n:<{width}}  (no ground truth beyond the first frame: masks written, not scored)")
            continue
        lines.append(f"{n:<{width}}  {m['J&F']:6.1f} {m['J']:6.1f} {m['F']:6.1f}   "
                     f"({m['num_sequences']} sequences, {m['num_objects']} objects)")
    seqs = list(results[names[0]].get("sequences", {}))
    if seqs:
        lines.append(f"per sequence J&F ({' / '.join(names)}):")
        for s in seqs:
            values = [f"{results[n]['sequences'][s]['J&F']:5.1f}" for n in names
                      if s in results[n].get("sequences", {})]
            lines.append(f"  {s:<{width}}  {' / '.join(values)}")
    return lines
