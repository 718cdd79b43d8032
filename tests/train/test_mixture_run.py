"""A pretraining mixture end to end (data.sources, data/mixture.py): two ranks under the real ``deepspeed`` launcher
draw each epoch 3:1 from two sources and log the per-source counts; kill -9 mid-epoch and the relaunch retraces
the uninterrupted run's steps and counts. A source that cannot deliver is named."""
import json
from pathlib import Path

import pytest

from motionmae_ds.config import ConfigError
from motionmae_ds.data.datasets import DataLoadError
from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.runtime.errors import TooManyBadVideosError
from tests.helpers import ZERO2, assert_same_steps, kill9, read_log, run_killed_at, train_in_process
from tests.helpers import run_pretrain as run
from tests.helpers import start_pretrain as start


def _two_lists(tmp_path: Path, synthetic_cache: Path, second: list[str] | None = None) -> tuple[Path, Path]:
    """The 12 synthetic videos split 8 / 4 into two list files (``second`` replaces the second list's entries)."""
    lst = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    paths = [line.split()[0] for line in Path(lst).read_text().splitlines() if line.strip()]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"{p} 0\n" for p in paths[:8]))
    b.write_text("".join(f"{p} 0\n" for p in (second if second is not None else paths[8:])))
    return a, b


def _sources(a: Path, b: Path) -> list[dict]:
    return [{"name": "big", "list_file": str(a), "weight": 3, "sampling_rate": 2},
            {"name": "small", "list_file": str(b), "weight": 1, "sampling_rate": 1}]


def _source_records(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["epoch"]: r for r in map(json.loads, lines) if "source_samples" in r}


def test_two_ranks_draw_3_to_1_per_epoch_and_resume_exactly_after_kill9(tiny_config, tmp_path, synthetic_cache):
    a, b = _two_lists(tmp_path, synthetic_cache)
    # 12 places an epoch (9 from the 8 videos of "big", 3 from the 4 of "small"), 2 ranks x batch 2: 3 steps an
    # epoch, 5 epochs; checkpoints every 5 steps (5, 10: never an epoch's end, 3/6/9/12) and the last epoch's
    # end; a loader worker, so worker timing would show if it leaked into the data
    cfg = tiny_config(data={"synthetic": False, "sources": _sources(a, b), "num_workers": 1},
                      schedule={"epochs": 5, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 5, "save_every_epochs": 0, "log_every": 1})
    args = ["--config", cfg, "--deepspeed_config", ZERO2]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"

    # the uninterrupted run in the background while the other one is killed with -9 at step 8: its last checkpoint
    # is step 5's (mid-epoch, in epoch 1), steps 6 and 7 are logged past it
    ref = start(args + ["--output_dir", ref_dir], ranks=2, log_path=tmp_path / "ref.txt")
    try:
        rows = run_killed_at("pretrain", 8, args + ["--output_dir", cut_dir], 2, tmp_path / "cut1.txt")
        assert ref.wait(timeout=300) == 0, (tmp_path / "ref.txt").read_text()[-3000:]
    finally:  # a failed wait leaves no run behind
        if ref.poll() is None:
            kill9(ref)
    resumed_tag = (cut_dir / "checkpoints" / "latest").read_text().strip()
    assert resumed_tag == "step00000005" and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    resumed_step = 5
    ref_out = (tmp_path / "ref.txt").read_text()
    assert "data.sources[0] big: 8 videos, weight 3: 9 samples per epoch" in ref_out
    assert "data.sources[1] small: 4 videos, weight 1: 3 samples per epoch" in ref_out
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, 16))
    counts = _source_records(ref_dir)
    assert sorted(counts) == [0, 1, 2, 3, 4]
    for epoch, record in counts.items():
        assert record["source_samples"] == [9, 3] and record["source_bad_videos"] == [0, 0]
        assert (record["samples_source0"], record["samples_source1"]) == (9, 3)
        assert f"epoch {epoch}: samples per source (unreadable videos): data.sources[0] 9 (0), " \
               f"data.sources[1] 3 (0)" in ref_out

    again = run(args + ["--output_dir", cut_dir], ranks=2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / resumed_tag}" in again.stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, 16))
    assert_same_steps(reference, resumed, resumed_step + 1, 15, ("loss", "loss_frame", "loss_motion", "grad_norm"))
    # the interrupted epoch's counts include what was drawn before the kill
    after = _source_records(cut_dir)
    for epoch in range(resumed_step // 3, 5):
        assert after[epoch]["source_samples"] == [9, 3], epoch


def test_a_source_whose_videos_are_all_unreadable_is_named(tiny_config, tmp_path, synthetic_cache):
    broken = tmp_path / "broken"
    broken.mkdir()
    names = []
    for i in range(3):
        (broken / f"v{i}.mp4").write_text("not a video\n")
        names.append(str(broken / f"v{i}.mp4"))
    a, b = _two_lists(tmp_path, synthetic_cache, second=names)
    cfg = tiny_config(data={"synthetic": False, "sources": _sources(a, b)},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    with pytest.raises(DataLoadError, match=r"^data.sources\[1\] \(small\): item \d+: 11 videos in a row failed"):
        train_in_process("pretrain", cfg, tmp_path / "run")


def test_a_source_above_the_bad_fraction_is_named(tiny_config, tmp_path, synthetic_cache):
    a, b = _two_lists(tmp_path, synthetic_cache)
    good_b = [line.split()[0] for line in b.read_text().splitlines()]
    (tmp_path / "bad.mp4").write_text("not a video\n")
    a, b = _two_lists(tmp_path, synthetic_cache, second=[str(tmp_path / "bad.mp4")] + good_b[1:])
    # one of the 4 "small" videos is unreadable and drawn in epoch 0 (seed 0): 1 of that source's 3 samples, above
    # the limit of 10 %, while the whole epoch's 1 of 12 (8.3 %) is under it: the source is what stops the run
    cfg = tiny_config(data={"synthetic": False, "sources": _sources(a, b), "max_bad_fraction": 0.1},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    with pytest.raises(TooManyBadVideosError, match=r"epoch 0: data.sources\[1\]: 1/3 = 33.3% of its samples were "
                                                    r"unreadable videos, above data.max_bad_fraction=0.1"):
        train_in_process("pretrain", cfg, tmp_path / "run")


def test_a_source_whose_list_cannot_be_read_is_named(tiny_config, tmp_path, synthetic_cache):
    a, b = _two_lists(tmp_path, synthetic_cache)
    b.write_text("only_a_path_and_no_label.mp4\n")
    cfg = tiny_config(data={"synthetic": False, "sources": _sources(a, b)})
    with pytest.raises(ConfigError, match=r"data.sources\[1\].list_file=\S+b.txt: .*b.txt:1: cannot tell the list "
                                          r"format") as err:
        train_in_process("pretrain", cfg, tmp_path / "run")
    assert len(err.value.args[0].splitlines()) == 1
