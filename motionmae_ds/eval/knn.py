"""Weighted k-nearest-neighbour classification of frozen features, as DINO evaluates (k = 20, T = 0.07).

Train and test features are L2-normalised; each test video takes its k most cosine-similar training videos,
each votes for its label with weight exp(similarity / T), and the class scores are the summed votes.
Top-1 / top-5 are the shares of test videos whose label is among the 1 / 5 best-scored classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from motionmae_ds.config import ConfigError, FinetuneConfig
from motionmae_ds.eval.features import extract_features, read_pooled
from motionmae_ds.runtime import distributed as dist_utils


@torch.no_grad()
def knn_scores(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, num_classes: int,
               k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """(N_test, num_classes) summed exp(similarity / T) votes of each test row's k nearest training rows."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k} temperature={temperature}")
    train = F.normalize(train.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim = F.normalize(test[start: start + chunk].float(), dim=1) @ train.T
        top = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels.long()[top.indices], (top.values / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_metrics(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                k: int = 20, temperature: float = 0.07) -> dict[str, Any]:
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(train, train_labels, test, num_classes, k, temperature)
    ranked = scores.topk(min(5, num_classes), dim=1).indices
    hit = ranked == test_labels.long()[:, None]
    return {"top1": 100.0 * hit[:, 0].double().mean().item(), "top5": 100.0 * hit.any(dim=1).double().mean().item(),
            "k": k, "temperature": temperature, "num_train": int(train.shape[0]), "num_test": int(test.shape[0]),
            "num_classes": num_classes}


def knn_evaluate(train_dir: str | Path, test_dir: str | Path, k: int = 20, temperature: float = 0.07,
                 out: Optional[str | Path] = None) -> dict[str, Any]:
    """k-NN of two extraction directories (``launch/extract_features.py``); ``out``: write knn.json there."""
    train, train_labels = read_pooled(train_dir)
    test, test_labels = read_pooled(test_dir)
    if train.shape[1] != test.shape[1]:
        raise ConfigError(f"{train_dir} holds {train.shape[1]}-d features, {test_dir} {test.shape[1]}-d")
    metrics = knn_metrics(train, train_labels, test, test_labels, k, temperature)
    metrics.update(train=str(train_dir), test=str(test_dir))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "knn.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def knn_from_checkpoint(cfg: FinetuneConfig, source: Optional[str], out_dir: str | Path, k: int = 20,
                        temperature: float = 0.07, test_split: str = "val") -> dict[str, Any]:
    """Extract (or reuse) the config's train and ``test_split`` features under ``out_dir``, then k-NN."""
    out_dir = Path(out_dir)
    for split in ("train", test_split):
        print(extract_features(cfg, source, out_dir / split, split=split).line(), flush=True)
    return knn_evaluate(out_dir / "train", out_dir / test_split, k, temperature,
                        out=out_dir if dist_utils.is_main() else None)
