"""A pretraining run over a list that mixes good and unreadable videos finishes and names every bad file."""
import json
import shutil
from pathlib import Path

from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from tests.helpers import ZERO2, read_log
from tests.helpers import run_pretrain as run


def test_mixed_list_finishes_and_names_each_bad_file(tiny_config, tmp_path, synthetic_cache):
    good_list = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    good = [line.split()[0] for line in Path(good_list).read_text().splitlines() if line.strip()]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.mp4").write_bytes(b"")
    (bad_dir / "notes.mp4").write_text("this is a text file, not a video\n")
    shutil.copy(good[0], bad_dir / "cut.mp4")
    with open(bad_dir / "cut.mp4", "r+b") as f:
        f.truncate(300)
    bad = sorted(str(p) for p in bad_dir.iterdir())
    # 16 entries = 2 ranks x 2 per batch x 4 steps: one epoch visits every entry exactly once
    entries = good[:4] + [bad[0]] + good[4:8] + [bad[1]] + good[8:] + [bad[2], good[0]]
    list_file = tmp_path / "mixed.txt"
    list_file.write_text("".join(f"{p} 0\n" for p in entries))

    cfg = tiny_config(data={"synthetic": False, "list_file": str(list_file), "max_bad_fraction": 0.9},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out = tmp_path / "run"
    result = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    named = {r["bad_video"] for r in records if "bad_video" in r}
    assert named == set(bad), named
    for path in bad:
        assert f"skipped bad video {path}" in result.stdout
    totals = [r for r in records if "bad_videos" in r]
    assert totals and totals[-1]["bad_videos"] >= 3
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
