"""Multi-view test on 2 ranks (real launcher) with an odd number of videos equals the 1-process run exactly."""
import json

from tests.finetune_support import motion_lists, predictions, save_tiny_classifier, write_config
from tests.helpers import launch


def test_two_ranks_match_one_process_per_video(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    # 5 test videos: the 2-rank sampler pads rank 1 with a copy of video 0
    lines = open(lists["train"]).read().splitlines()[:5]
    odd = tmp_path / "odd_test.txt"
    odd.write_text("\n".join(lines) + "\n")
    save_tiny_classifier(tmp_path / "clf.pth")
    cfg = write_config(tmp_path / "eval.yaml", data={"train_list": lists["train"], "test_list": str(odd)},
                       eval={"test_clips": 2, "test_crops": 3, "batch_size": 2})

    outs = {}
    for ranks in (2, 0):
        out = tmp_path / f"out{ranks}"
        res = launch("evaluate.py", ["--checkpoint", tmp_path / "clf.pth", "--config", cfg, "--output_dir", out],
                     ranks=ranks)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs[ranks] = out
    m2, m1 = (json.loads((outs[r] / "metrics.json").read_text()) for r in (2, 0))
    assert m1 == m2
    assert m1["num_videos"] == 5 and m1["views_per_video"] == 6
    p2, p1 = predictions(outs[2] / "predictions.jsonl"), predictions(outs[0] / "predictions.jsonl")
    assert [p["index"] for p in p1] == [0, 1, 2, 3, 4]
    assert p1 == p2  # same per-video scores, bit for bit, each video once
    assert all(abs(sum(p["scores"]) - 1) < 1e-5 for p in p1)
    assert len({tuple(p["scores"]) for p in p1}) == 5  # the videos really are scored differently
