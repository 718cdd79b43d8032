"""DAVIS's video-object-segmentation measures: J (region IoU) and F (boundary F-measure), per object and frame,
and their means as the official DAVIS-2017 evaluation reports them.

- J of one object in one frame: |pred & gt| / |pred | gt|, and 1 when both are empty.
- F: both masks' one-pixel boundaries (a pixel differs from its right, lower or lower-right neighbour; on
  the last row only the right one counts, on the last column only the lower one), each dilated by a disc of
  radius ceil(0.008 x image diagonal); precision = share of the predicted boundary within the dilated true
  one, recall the reverse, F their harmonic mean (empty boundaries: both empty 1, one empty 0).
- A sequence's J-Mean (F-Mean) is the mean over its objects of each object's mean over the scored frames
  (all but the first and the last); the overall J-Mean is the mean over every object of every sequence,
  and J&F-Mean = (J-Mean + F-Mean) / 2.
Objects are the ids in the ground truth of the scored frames or the first frame; an object absent from a
frame is scored there too (J = F = 1 if the prediction leaves it absent). ``tests/eval/test_vos.py``
checks these numbers against ``vos-benchmark`` (which reproduces the DAVIS evaluation) and by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

BOUNDARY_FRACTION = 0.008


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J of two boolean masks."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels whose right, lower or lower-right neighbour is on the other side of the mask."""
    m = np.asarray(mask, dtype=bool)
    right = np.zeros_like(m)
    below = np.zeros_like(m)
    diagonal = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    below[:-1, :] = m[1:, :]
    diagonal[:-1, :-1] = m[1:, 1:]
    edge = (m != right) | (m != below) | (m != diagonal)
    edge[-1, :] = m[-1, :] != right[-1, :]   # no row below the last one
    edge[:, -1] = m[:, -1] != below[:, -1]   # no column right of the last one
    edge[-1, -1] = False
    return edge


def _disc(radius: int) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).float()


def _dilate(edge: np.ndarray, disc: torch.Tensor) -> np.ndarray:
    r = disc.shape[0] // 2
    x = torch.from_numpy(edge.astype(np.float32))[None, None]
    return (F.conv2d(x, disc[None, None], padding=r)[0, 0] > 0.5).numpy()


def boundary_radius(shape: tuple[int, int]) -> int:
    return int(math.ceil(BOUNDARY_FRACTION * math.hypot(shape[0], shape[1])))


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """F of two boolean masks of one frame."""
    pred_edge, gt_edge = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(pred_edge.sum()), int(gt_edge.sum())
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    disc = _disc(boundary_radius(pred.shape))
    precision = float((pred_edge & _dilate(gt_edge, disc)).sum()) / n_pred
    recall = float((gt_edge & _dilate(pred_edge, disc)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class SequenceScores:
    """Per-object lists of per-frame J and F of one sequence."""
    name: str
    j: dict[int, list[float]] = field(default_factory=dict)
    f: dict[int, list[float]] = field(default_factory=dict)

    def add_frame(self, pred: np.ndarray, gt: np.ndarray, objects: list[int]) -> None:
        """Score one frame's label maps (object ids) for each object in ``objects``."""
        if pred.shape != gt.shape:
            raise ValueError(f"{self.name}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
        for obj in objects:
            p, g = pred == obj, gt == obj
            self.j.setdefault(obj, []).append(region_similarity(p, g))
            self.f.setdefault(obj, []).append(boundary_f_measure(p, g))

    def object_means(self) -> dict[int, tuple[float, float]]:
        """object -> (J-Mean, F-Mean) in percent."""
        return {o: (100.0 * float(np.mean(self.j[o])), 100.0 * float(np.mean(self.f[o]))) for o in sorted(self.j)}


def summarize(sequences: list[SequenceScores]) -> dict:
    """Per sequence and overall J&F-Mean, J-Mean, F-Mean (percent), as the DAVIS evaluation averages them."""
    per_seq, all_j, all_f = {}, [], []
    for seq in sequences:
        means = seq.object_means()
        if not means:
            continue
        js, fs = [m[0] for m in means.values()], [m[1] for m in means.values()]
        all_j.extend(js)
        all_f.extend(fs)
        j, f = float(np.mean(js)), float(np.mean(fs))
        per_seq[seq.name] = {"J&F": (j + f) / 2, "J": j, "F": f, "objects": len(means),
                             "per_object": {str(o): {"J": m[0], "F": m[1]} for o, m in means.items()}}
    if not all_j:
        return {"sequences": per_seq, "num_objects": 0}
    j, f = float(np.mean(all_j)), float(np.mean(all_f))
    return {"J&F": (j + f) / 2, "J": j, "F": f, "num_sequences": len(per_seq), "num_objects": len(all_j),
            "sequences": per_seq}
