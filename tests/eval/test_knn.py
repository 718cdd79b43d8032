"""Weighted k-NN (eval/knn.py, launch/knn_eval.py) against votes computed by hand."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from motionmae_ds.eval.knn import knn_metrics, knn_scores
from tests.helpers import call_main


def test_votes_are_exp_similarity_over_temperature_of_the_k_nearest():
    # unit vectors at angles 0, 30, 90, 180 degrees with labels 0, 1, 1, 0; the query at 10 degrees
    angles = torch.tensor([0.0, 30.0, 90.0, 180.0]) * math.pi / 180
    train = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])  # scale: ignored
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[math.cos(math.pi / 18), math.sin(math.pi / 18)]])
    scores = knn_scores(train, labels, query, num_classes=2, k=3, temperature=0.5)
    # nearest 3: 0 deg (cos 10), 30 deg (cos 20), 90 deg (cos 80); 180 deg is left out
    c = lambda deg: math.cos(math.radians(deg))  # noqa: E731
    expected = torch.tensor([[math.exp(c(10) / 0.5), math.exp(c(20) / 0.5) + math.exp(c(80) / 0.5)]])
    assert torch.allclose(scores, expected, rtol=1e-6)
    metrics = knn_metrics(train, labels, query, torch.tensor([1]), k=3, temperature=0.5)
    assert metrics["top1"] == 100.0 and metrics["num_classes"] == 2  # class 1 wins: 2 votes beat 1
    metrics = knn_metrics(train, labels, query, torch.tensor([1]), k=1, temperature=0.5)
    assert metrics["top1"] == 0.0 and metrics["top5"] == 100.0


def test_knn_eval_reads_two_extraction_dirs(tmp_path):
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 5
    for name, n in (("train", 30), ("val", 12)):
        labels = torch.arange(n) % 3
        feats = centres[labels] + 0.1 * torch.randn(n, 8)
        (tmp_path / name).mkdir()
        save_file({"features": feats, "labels": labels, "indices": torch.arange(n)}, str(tmp_path / name /
                                                                                         "pooled.safetensors"))
    proc = call_main("knn_eval.py", ["--train", tmp_path / "train", "--test", tmp_path / "val"])
    assert proc.returncode == 0, proc.stderr
    assert "k-NN (k=20, T=0.07) top-1 100.00" in proc.stdout and "(30 train, 12 test videos)" in proc.stdout
    assert json.loads((tmp_path / "val" / "knn.json").read_text())["top1"] == 100.0


@pytest.mark.parametrize("args,message", [
    ([], "config error: give --checkpoint (and --output_dir), or --train and --test extraction directories"),
    (["--train", "/nonexistent/a", "--test", "/nonexistent/b"],
     "config error: /nonexistent/a: no pooled.safetensors (run launch/extract_features.py --output_dir /nonexistent/a"),
    (["--k", "0", "--train", "a", "--test", "b"], "config error: --k must be >= 1 and --temperature > 0"),
])
def test_knn_eval_bad_input_is_one_line_and_exit_2(args, message):
    proc = call_main("knn_eval.py", args)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(message)
    assert len(proc.stderr.strip().splitlines()) == 1
