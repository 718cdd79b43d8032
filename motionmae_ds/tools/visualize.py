"""Reconstruction figures (like the paper's Figure 3): original frames, mask, predicted frames, true and
predicted motion, one row each, one column per frame. Used by the training run at every checkpoint and by
``launch/visualize.py`` for any video file and a saved checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_masker, build_model
from motionmae_ds.config import PretrainConfig, config_from_dict, load_pretrain_config
from motionmae_ds.data.decode import count_frames, read_frames
from motionmae_ds.data.finishing import normalize_batch
from motionmae_ds.data.sampling import uniform_clip_indices
from motionmae_ds.data.transforms import EvalTransform
from motionmae_ds.models.targets import temporal_difference

CELL_MIN = 96      # pixels per frame cell: tiny demo clips would be unreadable at their own size
LABEL_WIDTH = 110
GREY = 0.5
NORM_EPS = 1e-6    # the model's per-token target normalisation uses (std + 1e-6)


def load_clip(cfg: PretrainConfig, path: str | Path) -> torch.Tensor:
    """The centre clip of a video as the eval pipeline sees it: normalised (3, T, S, S)."""
    n = count_frames(str(path), backend=cfg.data.decode_backend)
    indices = uniform_clip_indices(n, cfg.model.num_frames, cfg.data.sampling_rate, num_clips=1)[0]
    frames = read_frames(str(path), indices, backend=cfg.data.decode_backend)
    size = cfg.model.img_size
    return normalize_batch(EvalTransform(input_size=size, short_side_size=size)(frames), cfg.data.mean, cfg.data.std)


def _denorm_tokens(pred: torch.Tensor, raw: torch.Tensor, channels: int) -> torch.Tensor:
    """Map per-token-normalised predictions back to pixels with the true token's mean/std (the only
    statistics available; this is how normalised-target reconstructions are shown)."""
    b, n, p = raw.shape
    r = raw.reshape(b, n, p // channels, channels)
    mean = r.mean(dim=-2, keepdim=True)
    std = r.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return (pred.reshape(b, n, p // channels, channels) * (std + NORM_EPS) + mean).reshape(b, n, p)


def _fill_masked(raw: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm: bool, channels: int) -> torch.Tensor:
    """Visible tokens keep their true values, masked tokens get the prediction (ascending token order)."""
    out = raw.clone()
    masked_raw = raw[mask].reshape(pred.shape)
    values = _denorm_tokens(pred, masked_raw, channels) if norm else pred
    out[mask] = values.reshape(-1, raw.shape[-1]).to(out.dtype)
    return out


def _to_rgb(clip: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """(3, T, H, W) in [0, scale] -> uint8 (T, H, W, 3)."""
    x = (clip.float() / scale).clamp(0, 1).permute(1, 2, 3, 0).cpu().numpy()
    return (x * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def reconstruct(model: Any, video: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the model on one clip; returns [0, 1]-pixel clips (3, T, H, W) for every row of the figure."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        videos = video[None].to(param.device, torch.float32)
        out = model(videos, mask.to(param.device), return_pred=True)
    finally:
        model.train(was_training)
    norm, c = bool(model.norm_target), model.in_chans
    pixels = model.unnormalize(videos)
    frame_raw = model.patchify(pixels)
    rows = {"original": pixels[0]}
    token_mask = mask.to(param.device)
    masked_view = frame_raw.clone()
    masked_view[token_mask] = GREY
    rows["mask"] = model.unpatchify(masked_view)[0]
    if "pred_frame" in out:
        rows["predicted"] = model.unpatchify(_fill_masked(frame_raw, out["pred_frame"].float(), token_mask, norm, c))[0]

    motion = temporal_difference(pixels, model.motion_granularity, model.motion_signed)
    motion_raw = model.patchify(motion)
    rows["true motion"] = motion[0]
    if "pred_motion" in out:
        rows["pred motion"] = model.unpatchify(
            _fill_masked(motion_raw, out["pred_motion"].float(), token_mask, norm, c))[0]
    return rows


def render_rows(rows: dict[str, torch.Tensor], title: str = "") -> Image.Image:
    """Compose labelled rows of frames into one RGB image."""
    # motion is small in [0, 1]; show true and predicted on one shared scale so they compare
    motion_keys = [k for k in rows if "motion" in k]
    motion_scale = max(float(rows["true motion"].abs().max()), 1e-3) if "true motion" in rows else 1.0
    arrays = {}
    for key, clip in rows.items():
        if key in motion_keys:
            clip = clip.abs() if key == "true motion" or clip.min() < 0 else clip
            arrays[key] = _to_rgb(clip, motion_scale)
        else:
            arrays[key] = _to_rgb(clip)
    t, h, w, _ = next(iter(arrays.values())).shape
    zoom = max(1, -(-CELL_MIN // max(h, w)))
    ch, cw = h * zoom, w * zoom
    top = 20 if title else 0
    canvas = Image.new("RGB", (LABEL_WIDTH + t * (cw + 2), top + len(arrays) * (ch + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill="black")
    for r, (key, frames) in enumerate(arrays.items()):
        y = top + r * (ch + 2)
        draw.text((4, y + ch // 2 - 6), key, fill="black")
        for i in range(t):
            cell = Image.fromarray(frames[i]).resize((cw, ch), Image.NEAREST)
            canvas.paste(cell, (LABEL_WIDTH + i * (cw + 2), y))
    return canvas


def render_reconstruction(model: Any, video: torch.Tensor, cfg: PretrainConfig, ratio: Optional[float] = None,
                          seed: int = 0) -> Image.Image:
    """Mask ``video`` with the config's mask kind at ``ratio`` (a fixed seed) and draw the figure."""
    ratio = cfg.masking.ratio if ratio is None else ratio
    masker_cfg = config_from_dict(cfg.to_dict(), origin=cfg.source)
    masker_cfg.masking.ratio = ratio
    gen = torch.Generator().manual_seed(seed)
    mask = build_masker(masker_cfg, tuple(model.grid))(1, device=torch.device("cpu"), generator=gen)
    rows = reconstruct(model, video, mask)
    return render_rows(rows, title=f"mask {cfg.masking.kind} {ratio:.0%}")


# -- loading a trained model without a DeepSpeed engine ---------------------------------------------------
VISUALIZE = "launch/visualize.py (reconstruction figures)"


def load_pretraining_checkpoint(checkpoint: str | Path, tag: Optional[str] = None) -> tuple[Any, PretrainConfig]:
    """The pretraining model and its config from a run, checkpoint or tag directory (default tag: the one
    ``latest`` names); the config comes from the checkpoint itself, else from the run's config.yaml."""
    ckpt_dir, tag = ckpt.resolve(checkpoint, tag)
    ckpt.require_kind(checkpoint, ckpt.source_kind(checkpoint), "pretrain", VISUALIZE)
    states = ckpt.load_model_states(ckpt_dir, tag)
    ckpt.require_kind(checkpoint, states.get("kind") or ckpt.kind_of_config(states.get("config")), "pretrain",
                      VISUALIZE)
    if "config" in states:
        cfg = config_from_dict(states["config"], origin=str(ckpt_dir / tag))
    else:
        cfg = load_pretrain_config(ckpt_dir.parent / ckpt.RUN_CONFIG)
    model = build_model(cfg)
    # module weights are bf16 copies of the fp32 master; plenty for a figure
    model.load_state_dict(ckpt.module_weights(states, str(ckpt_dir / tag)))
    model.eval()
    return model, cfg


def save_reconstruction_figure(model: Any, cfg: PretrainConfig, video_path: str | Path, out_path: str | Path) -> Path:
    """The training run's figure at a checkpoint: ``video_path``'s centre clip at the run's mask ratio (a fixed
    seed), written as a PNG at ``out_path``. The launcher hands this to the pretraining task."""
    image = render_reconstruction(model, load_clip(cfg, video_path), cfg, ratio=cfg.masking.ratio, seed=cfg.run.seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(out_path)
    return out_path
