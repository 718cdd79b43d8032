"""Multi-view evaluation: softmax per view, averaged per video, gathered across ranks with collectives.

Each rank scores its share of the dataset (the distributed sampler pads the last share by wrapping, so some
items are scored twice). Every scored view carries the dataset item it came from and the video index; after
``all_gather_into_tensor`` the duplicates of padded items are dropped by item id, and the per-video mean is
taken over the remaining views in a fixed (video, item, view) order in float64, so the per-video scores do
not depend on how many ranks ran or how the items were batched.

Works with datasets that yield one view per item (``video`` (3, T, S, S), optional ``view``) or all views of
a video per item (``video`` (V, 3, T, S, S)).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from motionmae_ds.engine.sampler import DistributedSampler


class IndexedDataset(Dataset):
    """Adds ``item`` (the position in the dataset) to each sample, so padded duplicates can be recognised."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[i])
        sample["item"] = i
        return sample


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"video": torch.stack([b["video"] for b in batch])}
    for key in ("label", "index", "item"):
        out[key] = torch.tensor([int(b[key]) for b in batch], dtype=torch.long)
    out["view"] = torch.tensor([int(b.get("view", 0)) for b in batch], dtype=torch.long)
    out["skipped"] = [s for b in batch for s in (b.get("skipped") or [])]
    return out


@dataclass
class ViewScores:
    """One row per scored view: ``meta`` int64 (N, 4) = (item, video, view, label); ``probs`` float32 (N, C)."""
    meta: torch.Tensor
    probs: torch.Tensor
    # unreadable videos the dataset replaced by others (their replacements are scored instead)
    skipped: int = 0


@dataclass
class VideoScores:
    index: torch.Tensor      # (M,) video indices, ascending
    label: torch.Tensor      # (M,)
    probs: torch.Tensor      # (M, C) float32, mean of the per-view softmax
    num_views: torch.Tensor  # (M,)


@torch.no_grad()
def score_views(model: nn.Module, loader: DataLoader, device: torch.device) -> ViewScores:
    """Run the model on every view this rank's loader yields."""
    was_training = model.training
    model.eval()
    metas, probs, skipped = [], [], 0
    try:
        for batch in loader:
            skipped += len(batch.get("skipped") or [])
            videos = batch["video"]
            n = videos.shape[0]
            if videos.dim() == 6:  # (B, V, 3, T, S, S): all views of each video in one item
                v = videos.shape[1]
                videos = videos.flatten(0, 1)
                views = torch.arange(v).repeat(n)
                rep = lambda t: t.repeat_interleave(v)  # noqa: E731
            else:
                views = batch["view"]
                rep = lambda t: t  # noqa: E731
            logits = model(videos.to(device, non_blocking=True))
            probs.append(torch.softmax(logits.float(), dim=-1).cpu())
            metas.append(torch.stack([rep(batch["item"]), rep(batch["index"]), views, rep(batch["label"])], 1))
    finally:
        model.train(was_training)
    if not metas:
        return ViewScores(torch.empty(0, 4, dtype=torch.long), torch.empty(0, 0), skipped)
    return ViewScores(torch.cat(metas), torch.cat(probs), skipped)


def _all_gather_rows(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate every rank's rows (rank order); ranks may hold different row counts."""
    world = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], dtype=torch.long, device=device)
    counts = torch.empty(world, dtype=torch.long, device=device)
    dist.all_gather_into_tensor(counts, count)
    longest = int(counts.max())
    padded = torch.zeros((longest,) + tuple(rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows.to(device)
    out = torch.empty((world * longest,) + tuple(rows.shape[1:]), dtype=rows.dtype, device=device)
    dist.all_gather_into_tensor(out, padded)
    parts = [out[r * longest: r * longest + int(counts[r])] for r in range(world)]
    return torch.cat(parts).cpu()


def gather_views(local: ViewScores, device: torch.device) -> ViewScores:
    """Every rank's views on every rank (a no-op in a single-process world)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    num_classes = torch.tensor([local.probs.shape[1]], device=device)
    dist.all_reduce(num_classes, op=dist.ReduceOp.MAX)
    probs = local.probs if local.probs.numel() else torch.zeros(0, int(num_classes))
    skipped = torch.tensor([local.skipped], device=device)
    dist.all_reduce(skipped)
    return ViewScores(_all_gather_rows(local.meta, device), _all_gather_rows(probs, device), int(skipped))


def aggregate(views: ViewScores) -> VideoScores:
    """Drop padded duplicates (same item and view), then average the views of each video."""
    meta, probs = views.meta, views.probs
    if meta.shape[0] == 0:
        raise ValueError("evaluation produced no predictions (empty dataset?)")
    # stable sort by (video, item, view) so sums run in one fixed order whatever the rank layout
    order = torch.arange(meta.shape[0])
    for col in (2, 0, 1):
        order = order[torch.sort(meta[order, col], stable=True).indices]
    meta, probs = meta[order], probs[order]
    key = meta[:, 0] * (int(meta[:, 2].max()) + 1) + meta[:, 2]
    first = torch.ones(meta.shape[0], dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    meta, probs = meta[first], probs[first]
    videos, inverse, counts = torch.unique_consecutive(meta[:, 1], return_inverse=True, return_counts=True)
    sums = torch.zeros(videos.shape[0], probs.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, probs.double())
    labels = torch.zeros(videos.shape[0], dtype=torch.long)
    labels[inverse] = meta[:, 3]
    return VideoScores(videos, labels, (sums / counts[:, None]).float(), counts)


def compute_metrics(scores: VideoScores) -> dict[str, Any]:
    k = min(5, scores.probs.shape[1])
    topk = scores.probs.topk(k, dim=1).indices
    hit1 = (topk[:, 0] == scores.label).double().mean().item()
    hit5 = (topk == scores.label[:, None]).any(dim=1).double().mean().item()
    views = scores.num_views.unique()
    return {"top1": 100.0 * hit1, "top5": 100.0 * hit5, "num_videos": int(scores.index.shape[0]),
            "views_per_video": int(views[0]) if views.numel() == 1 else float(scores.num_views.double().mean())}


def write_results(out_dir: str | Path, metrics: dict[str, Any], scores: VideoScores,
                  paths: Optional[list[str]] = None, save_scores: bool = True, prefix: str = "") -> None:
    """``{prefix}metrics.json`` and ``{prefix}predictions.jsonl`` (one video per line, by index)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{prefix}metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    k = min(5, scores.probs.shape[1])
    top = scores.probs.topk(k, dim=1)
    with open(out_dir / f"{prefix}predictions.jsonl", "w") as f:
        for row in range(scores.index.shape[0]):
            idx = int(scores.index[row])
            rec: dict[str, Any] = {"index": idx, "label": int(scores.label[row]),
                                   "pred": int(top.indices[row, 0]), "top5": top.indices[row].tolist(),
                                   "top5_probs": top.values[row].tolist(), "views": int(scores.num_views[row])}
            if paths is not None and 0 <= idx < len(paths):
                rec["path"] = paths[idx]
            if save_scores:
                rec["scores"] = scores.probs[row].tolist()
            f.write(json.dumps(rec) + "\n")


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, rank: int, world: int,
             num_workers: int = 0, timeout_s: float = 300.0) -> tuple[dict[str, Any], VideoScores]:
    """Score ``dataset`` on all ranks (all must call); every rank returns the same metrics and scores."""
    from motionmae_ds.engine import distributed as dist_utils

    sampler = DistributedSampler(len(dataset), world, rank, shuffle=False, drop_last=False)  # type: ignore[arg-type]
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_eval, drop_last=False, timeout=timeout_s if num_workers > 0 else 0)
    views = gather_views(score_views(model, loader, device), device)
    scores = aggregate(views)
    dist_utils.barrier()
    metrics = compute_metrics(scores)
    if views.skipped:
        metrics["skipped_unreadable"] = views.skipped  # padded duplicates may count a bad video twice
    return metrics, scores
