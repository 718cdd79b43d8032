"""Multi-view aggregation against hand-computed references: padded duplicates dropped, views averaged."""
import json

import pytest
import torch

from motionmae_ds.engine.evaluate import ViewScores, aggregate, compute_metrics, write_results


def _views(rows):
    """rows: (item, video, view, label, probs)."""
    meta = torch.tensor([r[:4] for r in rows], dtype=torch.long)
    probs = torch.tensor([r[4] for r in rows], dtype=torch.float32)
    return ViewScores(meta, probs)


def test_duplicates_dropped_and_views_averaged():
    rows = [
        (0, 0, 0, 1, [0.2, 0.8, 0.0]), (0, 0, 1, 1, [0.6, 0.4, 0.0]),   # video 0, two views
        (1, 1, 0, 2, [0.1, 0.1, 0.8]), (1, 1, 1, 2, [0.3, 0.3, 0.4]),   # video 1
        (2, 2, 0, 2, [0.5, 0.5, 0.0]), (2, 2, 1, 2, [0.3, 0.0, 0.7]),   # video 2 (mis-classified)
        (0, 0, 0, 1, [0.2, 0.8, 0.0]), (0, 0, 1, 1, [0.6, 0.4, 0.0]),   # item 0 again: sampler padding
    ]
    scores = aggregate(_views(rows))
    assert scores.index.tolist() == [0, 1, 2] and scores.label.tolist() == [1, 2, 2]
    assert scores.num_views.tolist() == [2, 2, 2]
    expected = torch.tensor([[0.4, 0.6, 0.0], [0.2, 0.2, 0.6], [0.4, 0.25, 0.35]])
    assert torch.allclose(scores.probs, expected)
    m = compute_metrics(scores)
    assert m == {"top1": pytest.approx(100.0 * 2 / 3), "top5": 100.0, "num_videos": 3, "views_per_video": 2}


def test_result_independent_of_row_order():
    rows = [(i, i // 2, i % 2, i % 3, torch.softmax(torch.randn(5), 0).tolist()) for i in range(10)]
    a = aggregate(_views(rows))
    b = aggregate(_views(list(reversed(rows)) + rows[:3]))
    assert torch.equal(a.probs, b.probs) and torch.equal(a.index, b.index)


def test_top5_with_more_classes_and_files(tmp_path):
    probs = torch.eye(7)[[6, 0]] * 0.5 + 0.5 / 7
    rows = [(0, 0, 0, 6, probs[0].tolist()), (1, 1, 0, 3, probs[1].tolist())]
    scores = aggregate(_views(rows))
    m = compute_metrics(scores)
    assert m["top1"] == 50.0 and m["views_per_video"] == 1
    write_results(tmp_path, m, scores, paths=["a.mp4", "b.mp4"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == ["a.mp4", "b.mp4"]
    assert lines[0]["pred"] == 6 and len(lines[0]["top5"]) == 5 and len(lines[0]["scores"]) == 7
