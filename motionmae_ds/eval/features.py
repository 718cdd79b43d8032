"""Frozen-encoder features: the encoder of any weight source, and per-video feature extraction over a list.

The encoder is the pretraining one (patch embedding, blocks, final LayerNorm), sized by a finetuning config's
``model`` section (``builders.build_encoder``) and filled by ``checkpoint.load_into(..., "frozen_encoder")``
from any source the project reads (run dir, DeepSpeed checkpoint of any world size, our or VideoMAE's
``.pth``/safetensors, a Hugging Face VideoMAE directory). A source without the final norm (a finetuned
classifier) keeps a fresh, affine-free one.

Extraction reads each video as the finetuning job's validation split does (``builders.build_split(cfg,
list, "val")``: the config's clip sampling, resize and centre crop), runs the encoder and writes, per video,
``videos/<index>.safetensors`` with ``pooled`` (D,), the mean of the final tokens, and with ``tokens`` also
the token grid (t, h, w, D). Video i of the list goes to rank i % world; each file is written under a
temporary name and renamed, so a rerun with the same ``--output_dir`` skips every video already written and
computes only the rest. A video that cannot be decoded is skipped, logged with its reason and counted (it
is not replaced by another). At the end rank 0 writes ``index.json`` (settings, per video: index, path,
label, file; the unreadable ones with reasons) and ``pooled.safetensors`` (``features`` (N, D), ``labels``,
``indices``) for the k-NN evaluation.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_encoder, build_split, resolve_lists
from motionmae_ds.config import ConfigError, FinetuneConfig
from motionmae_ds.data.datasets import DataLoadError
from motionmae_ds.data.finishing import normalize_batch
from motionmae_ds.models.vit import VisionTransformerEncoder
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cpu_process import tune_cpu_process

INDEX = "index.json"
POOLED = "pooled.safetensors"
VIDEO_DIR = "videos"
SETTINGS = "extraction.json"
# data keys that change how fast the features come, not what they are
_RUNTIME_KEYS = ("num_workers", "loader_timeout_s", "max_bad_fraction", "cache_dir")


# -- the encoder ------------------------------------------------------------------------------------------

def load_frozen_encoder(cfg: FinetuneConfig, source: Optional[str | Path], seed: int = 0
                        ) -> tuple[VisionTransformerEncoder, str]:
    """(encoder in eval mode, one line saying what was loaded). ``source`` None or "none": random init,
    drawn from ``seed``."""
    torch.manual_seed(seed)
    encoder = build_encoder(cfg)
    if source is None or str(source) == "none":
        message = f"random init (seed {seed})"
    else:
        if not Path(source).exists():
            raise ConfigError(f"--checkpoint {source}: no such file or directory")
        try:
            report = ckpt.load_into(encoder, source, "frozen_encoder")
        except (ckpt.CheckpointError, OSError) as exc:
            raise ConfigError(f"--checkpoint {source}: {exc}") from None
        message = f"{source}: loaded {len(report.loaded)} encoder tensors"
        if report.missing:
            message += f"; fresh {', '.join(sorted({k.split('.')[0] for k in report.missing}))}"
    encoder.requires_grad_(False)
    return encoder.eval(), message


# -- extraction -------------------------------------------------------------------------------------------

@dataclass
class ExtractionSummary:
    out_dir: Path
    total: int
    computed: int = 0       # videos encoded by this run (all ranks)
    reused: int = 0         # videos already written by an earlier run
    bad: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (f"features of {self.total} videos: {self.computed} computed, {self.reused} already written, "
                f"{len(self.bad)} unreadable -> {self.out_dir}")


class _Videos(Dataset):
    """The listed videos by index; an unreadable one yields its reason instead of another video's clip."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.dataset.max_retries = 0  # never stand another video in for an unreadable one

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        try:
            sample = self.dataset[index]
        except DataLoadError as exc:
            reason = str(exc).split("; last: ", 1)[-1]
            path = str(self.dataset.records[index].path)
            if reason.startswith(f"{path}: "):
                reason = reason[len(path) + 2:]
            return {"index": index, "video": None, "reason": reason}
        return {"index": index, "video": sample["video"], "reason": None}


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def video_file(out_dir: Path, index: int) -> Path:
    return out_dir / VIDEO_DIR / f"{index:07d}.safetensors"


def _write_video(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _settings(cfg: FinetuneConfig, source: Optional[str], list_file: str, tokens: bool) -> dict[str, Any]:
    digest = hashlib.sha256(Path(list_file).read_bytes()).hexdigest()
    cfg_dict = cfg.to_dict()
    data = {k: v for k, v in cfg_dict["data"].items() if k not in _RUNTIME_KEYS}
    settings = {"checkpoint": str(source), "list_file": str(list_file), "list_sha256": digest, "tokens": tokens,
                "model": cfg_dict["model"], "data": data}
    return json.loads(json.dumps(settings))  # as it reads back from the file


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """A rerun must extract the same thing into the same directory; anything else starts a mixed set."""
    path = out_dir / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differ:
            raise ConfigError(f"--output_dir {out_dir}: holds features of another extraction (differs in "
                              f"{', '.join(differ)}); use a new --output_dir")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(settings, indent=1) + "\n")
        os.replace(tmp, path)


@torch.no_grad()
def extract_features(cfg: FinetuneConfig, source: Optional[str], out_dir: str | Path, list_file: Optional[str] = None,
                     split: str = "val", tokens: bool = False, batch_size: Optional[int] = None,
                     root: Optional[str] = None) -> ExtractionSummary:
    """Features of every video of ``list_file`` (default: the config's ``split`` list) on all ranks, its relative
    paths under ``root`` (default: ``data.root``). Unreadable videos are named and left out; when none could be
    read, ``DataLoadError`` (exit 4) with the summary line."""
    out_dir = Path(out_dir)
    if list_file is not None and not Path(list_file).is_file():
        raise ConfigError(f"--list {list_file}: file not found")
    if root is not None:
        if not Path(root).is_dir():
            raise ConfigError(f"--root {root}: directory not found")
        cfg.data.root = root
    dist_utils.init_distributed()
    tune_cpu_process()
    rank, world, device = dist_utils.rank(), dist_utils.world_size(), dist_utils.device()
    if list_file is None:
        lists = resolve_lists(cfg)  # the embedded set is generated here, rank 0 first
        if split not in lists:
            raise ConfigError(f"{cfg.source}: data.{split}_list is empty")
        list_file = lists[split]
    dataset = build_split(cfg, list_file, "val")
    settings = _settings(cfg, source, list_file, tokens)
    if dist_utils.is_main():
        _check_settings(out_dir, settings)
        (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    _check_settings(out_dir, settings)
    encoder, message = load_frozen_encoder(cfg, source, cfg.run.seed)
    encoder.to(device)
    if dist_utils.is_main():
        print(message, flush=True)

    mine = list(range(rank, len(dataset), world))
    todo = [i for i in mine if not video_file(out_dir, i).is_file()]
    counts = torch.tensor([len(mine) - len(todo), 0], dtype=torch.long)
    loader = DataLoader(_Videos(dataset, todo), batch_size=batch_size or cfg.eval.batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=_collate,
                        timeout=cfg.data.loader_timeout_s if cfg.data.num_workers > 0 else 0)
    bad: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc=f"features (rank 0 of {world})", disable=not dist_utils.is_main())
    for batch in loader:
        good = [b for b in batch if b["video"] is not None]
        for b in batch:
            if b["video"] is None:
                path = str(dataset.records[b["index"]].path)
                print(f"skipped bad video {path}: {b['reason']} (rank {rank})", flush=True)
                bad.append({"index": b["index"], "path": path, "reason": b["reason"]})
        if good:
            videos = torch.stack([b["video"] for b in good]).to(device, non_blocking=True)
            videos = normalize_batch(videos, cfg.data.mean, cfg.data.std)  # uint8 clips, normalised on the device
            with dist_utils.inference_precision(device):              # bf16 on an accelerator, fp32 on the CPU
                out = encoder(videos).float().cpu()                   # (B, N, D)
            for row, b in enumerate(good):
                record = dataset.records[b["index"]]
                tensors = {"pooled": out[row].mean(dim=0)}
                if tokens:
                    tensors["tokens"] = out[row].reshape(*encoder.grid, -1)
                _write_video(video_file(out_dir, b["index"]), tensors,
                             {"path": str(record.path), "label": str(int(record.label)), "index": str(b["index"])})
                counts[1] += 1
        bar.update(len(batch))
    bar.close()
    counts = dist_utils.all_reduce_sum(counts.to(device)).cpu()
    bad = sorted(dist_utils.gather_objects(bad), key=lambda b: b["index"])
    summary = ExtractionSummary(out_dir, len(dataset), computed=int(counts[1]), reused=int(counts[0]), bad=bad)
    if dist_utils.is_main():
        write_index(out_dir, dataset, settings, bad)
    dist_utils.barrier()
    if bad and not summary.computed and not summary.reused:  # every rank: the summary is the same on all
        raise DataLoadError(f"{summary.line()}: no video could be read (the first: {bad[0]['path']}: "
                            f"{bad[0]['reason']}); check the list's paths and --root")
    return summary


def write_index(out_dir: Path, dataset: Any, settings: dict[str, Any], bad: list[dict[str, Any]]) -> None:
    """``index.json`` and ``pooled.safetensors`` over every video written so far (list order)."""
    entries, feats, labels, indices = [], [], [], []
    for i, record in enumerate(dataset.records):
        path = video_file(out_dir, i)
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as f:
            feats.append(f.get_tensor("pooled"))
        entries.append({"index": i, "path": str(record.path), "label": int(record.label),
                        "file": str(path.relative_to(out_dir))})
        labels.append(int(record.label))
        indices.append(i)
    index = {**settings, "num_videos": len(dataset.records), "num_written": len(entries),
             "dim": int(feats[0].shape[0]) if feats else None, "videos": entries, "unreadable": bad}
    tmp = out_dir / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out_dir / INDEX)
    if feats:
        _write_video(out_dir / POOLED, {"features": torch.stack(feats), "labels": torch.tensor(labels),
                                        "indices": torch.tensor(indices)}, {"format": "pt"})


def read_pooled(out_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), labels (N,)) of an extraction directory."""
    path = Path(out_dir) / POOLED
    if not path.is_file():
        raise ConfigError(f"{out_dir}: no {POOLED} (run launch/extract_features.py --output_dir {out_dir} first)")
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("features"), f.get_tensor("labels")
