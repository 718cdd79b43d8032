"""Multi-view scoring and aggregation against hand-computed references: each item's views summed where they are
scored, padded duplicates dropped by item id, videos averaged over their items, whatever the ranks/batching."""
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from motionmae_ds.data.loader import DistributedSampler
from motionmae_ds.eval.evaluate import (
    IndexedDataset,
    ItemScores,
    aggregate,
    collate_eval,
    compute_metrics,
    evaluate,
    score_items,
    write_results,
)


def _items(rows):
    """rows: (item, video, views, label, sum of the views' probs)."""
    meta = torch.tensor([r[:4] for r in rows], dtype=torch.long)
    sums = torch.tensor([r[4] for r in rows], dtype=torch.float64)
    return ItemScores(meta, sums)


def test_duplicates_dropped_and_views_averaged():
    rows = [
        (0, 0, 2, 1, [0.8, 1.2, 0.0]),                                  # video 0, two views
        (1, 1, 2, 2, [0.4, 0.4, 1.2]),                                  # video 1
        (2, 2, 2, 2, [0.8, 0.5, 0.7]),                                  # video 2 (mis-classified)
        (0, 0, 2, 1, [0.8, 1.2, 0.0]),                                  # item 0 again: sampler padding
    ]
    scores = aggregate(_items(rows))
    assert scores.index.tolist() == [0, 1, 2] and scores.label.tolist() == [1, 2, 2]
    assert scores.num_views.tolist() == [2, 2, 2]
    expected = torch.tensor([[0.4, 0.6, 0.0], [0.2, 0.2, 0.6], [0.4, 0.25, 0.35]])
    assert torch.allclose(scores.probs, expected)
    m = compute_metrics(scores)
    assert m == {"top1": pytest.approx(100.0 * 2 / 3), "top5": 100.0, "num_videos": 3, "views_per_video": 2}


def test_result_independent_of_row_order():
    rows = [(i, i // 2, 3, i % 3, (3 * torch.softmax(torch.randn(5), 0)).tolist()) for i in range(10)]
    a = aggregate(_items(rows))
    b = aggregate(_items(list(reversed(rows)) + rows[:3]))
    assert torch.equal(a.probs, b.probs) and torch.equal(a.index, b.index)
    assert a.num_views.tolist() == [6] * 5


class _LogitsInVideo(torch.nn.Module):
    """A "model" whose logits are the first row of each view: views built from log-probabilities score them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0, :]


def _item(view_probs, label, video, skipped=()):
    views = torch.zeros(len(view_probs), 3, 1, 3, 3)
    views[:, 0, 0, 0, :] = torch.tensor(view_probs).log()
    return {"video": views, "label": label, "index": video, "skipped": list(skipped)}


# items 1 and 2 both yield video 1: item 2's own video was unreadable and video 1 stood in for it
DATASET = [
    _item([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], label=1, video=0),
    _item([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], label=2, video=1),
    _item([[0.5, 0.4, 0.1], [0.3, 0.2, 0.5]], label=2, video=1, skipped=[("bad.mp4", "no frames")]),
    _item([[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]], label=0, video=3),
]
EXPECTED = torch.tensor([[0.4, 0.5, 0.1],                      # (0.2 + 0.6) / 2, ...
                         [1.2 / 4, 1.0 / 4, 1.8 / 4],          # 4 views over items 1 and 2
                         [0.3, 0.3, 0.4]])


def _scored_by_ranks(dataset, world: int, batch_size: int) -> ItemScores:
    """What gather_items hands every rank: each rank's items (padded share included), in rank order."""
    parts = []
    for rank in range(world):
        sampler = DistributedSampler(len(dataset), world, rank, shuffle=False, drop_last=False)
        loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, collate_fn=collate_eval)
        parts.append(score_items(_LogitsInVideo(), loader, torch.device("cpu")))
    return ItemScores(torch.cat([p.meta for p in parts]), torch.cat([p.sums for p in parts]),
                      sum(p.skipped for p in parts))


def test_items_scored_per_rank_then_averaged_per_video():
    local = _scored_by_ranks(DATASET, world=3, batch_size=2)  # 3 ranks x 2 items: items 0 and 1 twice
    assert local.meta.tolist() == [[0, 0, 2, 1], [3, 3, 2, 0], [1, 1, 2, 2], [0, 0, 2, 1], [2, 1, 2, 2],
                                   [1, 1, 2, 2]]
    assert local.sums.dtype == torch.float64 and local.sums.shape == (6, 3)  # one row per item, not per view
    assert torch.allclose(local.sums[0], torch.tensor([0.8, 1.0, 0.2], dtype=torch.float64))
    scores = aggregate(local)
    assert scores.index.tolist() == [0, 1, 3] and scores.label.tolist() == [1, 2, 0]
    assert scores.num_views.tolist() == [2, 4, 2]
    assert torch.allclose(scores.probs, EXPECTED)
    m = compute_metrics(scores)
    assert m["top1"] == pytest.approx(100.0 * 2 / 3) and m["num_videos"] == 3
    assert m["views_per_video"] == pytest.approx(8 / 3)


@pytest.mark.parametrize("world,batch_size", [(2, 1), (3, 2), (4, 3), (5, 4)])
def test_scores_independent_of_world_size_and_batching(world, batch_size):
    one = aggregate(_scored_by_ranks(DATASET, world=1, batch_size=4))
    many = aggregate(_scored_by_ranks(DATASET, world=world, batch_size=batch_size))
    for a, b in zip((one.index, one.label, one.probs, one.num_views), (many.index, many.label, many.probs,
                                                                       many.num_views)):
        assert torch.equal(a, b)


def test_evaluate_one_process_and_one_view_items():
    metrics, scores = evaluate(_LogitsInVideo(), DATASET, batch_size=3, device=torch.device("cpu"), rank=0, world=1)
    assert torch.allclose(scores.probs, EXPECTED)
    assert metrics["skipped_unreadable"] == 1 and metrics["num_videos"] == 3
    # val items hold one view, (3, T, S, S), without the view axis
    val = [_item([p], label=i, video=i) for i, p in enumerate([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])]
    for item in val:
        item["video"] = item["video"][0]
    metrics, scores = evaluate(_LogitsInVideo(), val, batch_size=2, device=torch.device("cpu"), rank=0, world=1)
    assert metrics == {"top1": 100.0, "top5": 100.0, "num_videos": 3, "views_per_video": 1}
    assert math.isclose(float(scores.probs[1, 1]), 0.6, rel_tol=1e-6)


def test_top5_with_more_classes_and_files(tmp_path):
    probs = torch.eye(7)[[6, 0]] * 0.5 + 0.5 / 7
    rows = [(0, 0, 1, 6, probs[0].tolist()), (1, 1, 1, 3, probs[1].tolist())]
    scores = aggregate(_items(rows))
    m = compute_metrics(scores)
    assert m["top1"] == 50.0 and m["views_per_video"] == 1
    write_results(tmp_path, m, scores, paths=["a.mp4", "b.mp4"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == ["a.mp4", "b.mp4"]
    assert lines[0]["pred"] == 6 and len(lines[0]["top5"]) == 5 and len(lines[0]["scores"]) == 7
