"""Multi-view evaluation: softmax per view, averaged per video, gathered across ranks once per video.

Every dataset item holds all views of one video (``video`` (V, 3, T, S, S): K clips x C crops in test mode;
a val item's single view (3, T, S, S) counts as V = 1). Each rank scores its share of the items and sums each
item's per-view softmax in float64 where it was computed, so what crosses ranks is one row per item (memory
O(videos x classes) per rank, not O(views x classes)). The distributed sampler pads the last share by
wrapping, so some items are scored twice: after the gather the copies are dropped by item id (the lowest
rank's copy is kept), and each video's mean is taken over its items in item order. A video that stands in for
an unreadable one appears in two items and is averaged over both. Views are summed in view order and items in
item order, so the per-video scores do not depend on how many ranks ran or how the items were batched.

``evaluate_checkpoint`` runs this on saved weights (``launch/evaluate.py``, ``launch/finetune.py --eval``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_finetune_model, build_split, resolve_lists
from motionmae_ds.config import ConfigError, FinetuneConfig
from motionmae_ds.data.finishing import normalize_batch
from motionmae_ds.data.loader import DistributedSampler, ignore_stop_signals
from motionmae_ds.runtime import distributed as dist_utils
from motionmae_ds.runtime.cpu_process import tune_cpu_process

# columns of ItemScores.meta
ITEM, VIDEO, VIEWS, LABEL = range(4)


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


def _views_of(video: torch.Tensor) -> torch.Tensor:
    """An item's views as (V, 3, T, S, S)."""
    if video.dim() == 4:  # val: one clip, one crop
        return video.unsqueeze(0)
    if video.dim() == 5:
        return video
    raise ValueError(f"evaluation items hold (V, 3, T, S, S) or (3, T, S, S) videos, got {tuple(video.shape)}")


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``video`` (B, V, 3, T, S, S); ``label``, ``index`` (the video) and ``item`` (B,); ``skipped`` flat."""
    out: dict[str, Any] = {"video": torch.stack([_views_of(b["video"]) for b in batch])}
    for key in ("label", "index", "item"):
        out[key] = torch.tensor([int(b[key]) for b in batch], dtype=torch.long)
    out["skipped"] = [s for b in batch for s in (b.get("skipped") or [])]
    return out


@dataclass
class ItemScores:
    """One row per scored item: ``meta`` int64 (N, 4) = (item, video, views, label); ``sums`` float64 (N, C),
    the sum of the item's per-view softmax."""
    meta: torch.Tensor
    sums: torch.Tensor
    # unreadable videos the dataset replaced by others (their replacements are scored instead)
    skipped: int = 0


@dataclass
class VideoScores:
    index: torch.Tensor      # (M,) video indices, ascending
    label: torch.Tensor      # (M,)
    probs: torch.Tensor      # (M, C) float32, mean of the per-view softmax
    num_views: torch.Tensor  # (M,)


@torch.no_grad()
def score_items(model: nn.Module, loader: DataLoader, device: torch.device, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> ItemScores:
    """Run the model on every view of every item this rank's loader yields; sum each item's views. With ``mean``
    and ``std`` (the config's), the uint8 views are normalised on the device; without, they are the model's input."""
    was_training = model.training
    model.eval()
    metas, sums, skipped = [], [], 0
    try:
        for batch in loader:
            skipped += len(batch["skipped"])
            videos = batch["video"]
            n, v = videos.shape[:2]
            with dist_utils.inference_precision(device):  # bf16 on an accelerator, fp32 on the CPU
                videos = videos.flatten(0, 1).to(device, non_blocking=True)
                logits = model(normalize_batch(videos, mean, std) if mean is not None else videos)
            probs = torch.softmax(logits.float(), dim=-1).cpu().view(n, v, -1)
            total = probs[:, 0].double()
            for k in range(1, v):  # one fixed order, whatever the batch
                total = total + probs[:, k]
            sums.append(total)
            metas.append(torch.stack([batch["item"], batch["index"], torch.full((n,), v), batch["label"]], 1))
    finally:
        model.train(was_training)
    if not metas:
        return ItemScores(torch.empty(0, 4, dtype=torch.long), torch.empty(0, 0, dtype=torch.float64), skipped)
    return ItemScores(torch.cat(metas), torch.cat(sums), skipped)


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


def gather_items(local: ItemScores, device: torch.device) -> ItemScores:
    """Every rank's item rows on every rank (a no-op in a single-process world)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    num_classes = torch.tensor([local.sums.shape[1]], device=device)
    dist.all_reduce(num_classes, op=dist.ReduceOp.MAX)  # a rank with no items does not know C
    sums = local.sums if local.sums.numel() else torch.zeros(0, int(num_classes), dtype=torch.float64)
    skipped = torch.tensor([local.skipped], device=device)
    dist.all_reduce(skipped)
    return ItemScores(_all_gather_rows(local.meta, device), _all_gather_rows(sums, device), int(skipped))


def _stable_order(keys: torch.Tensor) -> torch.Tensor:
    return torch.sort(keys, stable=True).indices


def aggregate(items: ItemScores) -> VideoScores:
    """Drop padded duplicates (same item id; the first row is kept), then average each video's views."""
    meta, sums = items.meta, items.sums
    if meta.shape[0] == 0:
        raise ValueError("evaluation produced no predictions (empty dataset?)")
    order = _stable_order(meta[:, ITEM])
    meta, sums = meta[order], sums[order]
    first = torch.ones(meta.shape[0], dtype=torch.bool)
    first[1:] = meta[1:, ITEM] != meta[:-1, ITEM]
    meta, sums = meta[first], sums[first]
    order = _stable_order(meta[:, VIDEO])  # items of one video stay in item order
    meta, sums = meta[order], sums[order]
    videos, inverse = torch.unique_consecutive(meta[:, VIDEO], return_inverse=True)
    totals = torch.zeros(videos.shape[0], sums.shape[1], dtype=torch.float64)
    totals.index_add_(0, inverse, sums)
    views = torch.zeros(videos.shape[0], dtype=torch.long)
    views.index_add_(0, inverse, meta[:, VIEWS])
    labels = torch.zeros(videos.shape[0], dtype=torch.long)
    labels[inverse] = meta[:, LABEL]
    return VideoScores(videos, labels, (totals / views[:, None]).float(), views)


def compute_metrics(scores: VideoScores) -> dict[str, Any]:
    k = min(5, scores.probs.shape[1])
    topk = scores.probs.topk(k, dim=1).indices
    hit1 = (topk[:, 0] == scores.label).double().mean().item()
    hit5 = (topk == scores.label[:, None]).any(dim=1).double().mean().item()
    views = scores.num_views.unique()
    return {"top1": 100.0 * hit1, "top5": 100.0 * hit5, "num_videos": int(scores.index.shape[0]),
            "views_per_video": int(views[0]) if views.numel() == 1 else float(scores.num_views.double().mean())}


def record_paths(dataset: Any) -> Optional[list[str]]:
    """The video path of each record of a list-file dataset (None for datasets without records)."""
    records = getattr(dataset, "records", None)
    return [str(r.path) for r in records] if records is not None else None


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
             num_workers: int = 0, timeout_s: float = 300.0, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None) -> tuple[dict[str, Any], VideoScores]:
    """Score ``dataset`` on all ranks (all must call); every rank returns the same metrics and scores. ``mean`` /
    ``std``: the config's ``data.mean`` / ``data.std``, to normalise the uint8 clips on the device."""
    sampler = DistributedSampler(len(dataset), world, rank, shuffle=False, drop_last=False)  # type: ignore[arg-type]
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_eval, drop_last=False, timeout=timeout_s if num_workers > 0 else 0,
                        # a finetuning run validates with this loader: a stop signal is its rank's to act on
                        worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
    items = gather_items(score_items(model, loader, device, mean, std), device)
    scores = aggregate(items)
    metrics = compute_metrics(scores)
    if items.skipped:
        metrics["skipped_unreadable"] = items.skipped  # padded duplicates may count a bad video twice
    return metrics, scores


# -- saved weights ----------------------------------------------------------------------------------------

EVALUATION = "evaluation (launch/evaluate.py, launch/finetune.py --eval)"


def require_finetuned(source: str | Path) -> None:
    """Refuse a pretraining run's checkpoint before its config is read as a finetuning one (one line naming both
    kinds and the commands that take it); the client state's config is checked again when the weights load."""
    try:
        ckpt.require_kind(source, ckpt.source_kind(source), "finetune", EVALUATION)
    except ckpt.CheckpointError as exc:
        raise ConfigError(f"--checkpoint {exc}") from None


def load_eval_weights(model: nn.Module, source: str | Path) -> str:
    """Weights of a finetune run (exact module names) or any classifier checkpoint (head kept) that fill the
    whole model. Returns what was loaded, for the log."""
    try:
        return ckpt.load_into(model, source, "evaluate").summary()
    except ckpt.WeightsDoNotFitError as exc:  # its message starts with the source
        raise ConfigError(f"--checkpoint {exc}") from None
    except ckpt.CheckpointError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None


def evaluate_checkpoint(cfg: FinetuneConfig, source: str | Path, output_dir: str | Path,
                        split: str = "test") -> dict[str, Any]:
    """Multi-view test (or one-view val) of saved weights on all ranks; rank 0 writes metrics/predictions."""
    def split_dataset() -> Any:
        lists = resolve_lists(cfg)
        if split not in lists:
            raise ConfigError(f"{cfg.source}: data.{split}_list is empty")
        if not Path(lists[split]).is_file():
            raise ConfigError(f"{cfg.source}: data.{split}_list={lists[split]}: file not found")
        return build_split(cfg, lists[split], split)

    require_finetuned(source)
    # list files are checked before any process group exists; the synthetic set needs rank 0 to go first
    dataset = None if cfg.data.synthetic else split_dataset()
    dist_utils.init_distributed()
    tune_cpu_process()
    rank, world, device = dist_utils.rank(), dist_utils.world_size(), dist_utils.device()
    if dataset is None:
        dataset = split_dataset()
    torch.manual_seed(cfg.run.seed)
    model = build_finetune_model(cfg)
    message = load_eval_weights(model, source)
    model.to(device)
    metrics, scores = evaluate(model, dataset, cfg.eval.batch_size, device, rank, world,
                               num_workers=cfg.data.num_workers, timeout_s=cfg.data.loader_timeout_s,
                               mean=cfg.data.mean, std=cfg.data.std)
    if dist_utils.is_main():
        print(message, flush=True)
        write_results(output_dir, metrics, scores, record_paths(dataset), cfg.eval.save_scores)
    dist_utils.barrier()
    return metrics
