import json
import os
from collections import Counter

import numpy as np
import pytest
import videos

from motionmae_ds.data.decode import count_frames
from motionmae_ds.data.lists import read_list
from motionmae_ds.data.synthetic import _render, ensure_synthetic_dataset

SMALL = dict(num_videos=6, num_frames=10, size=32, seed=3)
CLASSES = dict(num_videos=32, num_frames=8, size=48, seed=1)


def test_pretrain_set_is_real_cached_and_reproducible(tmp_path):
    list_file = ensure_synthetic_dataset(tmp_path / "a", "pretrain", **SMALL)
    records = read_list(list_file)
    assert len(records) == 6
    for rec in records:
        assert rec.path.endswith(".mp4") and os.path.isabs(rec.path)
        assert count_frames(rec.path) == 10
        frames = videos.reference_decode(rec.path)
        assert frames.shape == (10, 32, 32, 3)
        assert frames.std() > 20 and np.abs(np.diff(frames.astype(int), axis=0)).mean() > 1  # texture, motion
    with av_open(records[0].path) as info:
        assert info == ("h264", "yuv420p")

    mtimes = [os.stat(r.path).st_mtime_ns for r in records]
    assert ensure_synthetic_dataset(tmp_path / "a", "pretrain", **SMALL) == list_file
    assert [os.stat(r.path).st_mtime_ns for r in records] == mtimes  # reused, not rewritten
    manifest = json.loads((tmp_path / "a" / "pretrain" / "manifest.json").read_text())
    assert manifest["params"]["num_frames"] == 10 and len(manifest["files"]) == 6

    # Same seed elsewhere: the same rendered frames (x264's bytes may differ slightly); another seed: others.
    other = read_list(ensure_synthetic_dataset(tmp_path / "b", "pretrain", **SMALL))
    for x, y in zip(records, other):
        diff = np.abs(videos.reference_decode(x.path).astype(int) - videos.reference_decode(y.path))
        assert diff.mean() < 10  # rare x264 non-determinism changes some blocks, not the content
    reseeded = read_list(ensure_synthetic_dataset(tmp_path / "b", "pretrain", **{**SMALL, "seed": 4}))
    diff = np.abs(videos.reference_decode(reseeded[0].path).astype(int) - videos.reference_decode(records[0].path))
    assert diff.mean() > 30
    assert not list((tmp_path / "b" / "pretrain").glob(".*tmp*"))  # no temporary files left behind

    # A damaged cache (a file deleted) is regenerated.
    os.remove(records[1].path)
    ensure_synthetic_dataset(tmp_path / "a", "pretrain", **SMALL)
    assert count_frames(records[1].path) == 10


class av_open:
    def __init__(self, path):
        import av

        self.container = av.open(path)

    def __enter__(self):
        stream = self.container.streams.video[0]
        return stream.codec_context.name, stream.codec_context.pix_fmt

    def __exit__(self, *exc):
        self.container.close()


def _direction(frames: np.ndarray) -> int:
    """Which class shift (right, left, down, up) best maps frame 0 onto frame 3 where the picture changed."""
    a, b = frames[0].astype(float), frames[3].astype(float)
    moving = np.abs(a - b).sum(-1) > 30
    errors = []
    for axis, sign in ((1, 1), (1, -1), (0, 1), (0, -1)):
        errors.append(min(np.abs(np.roll(a, sign * k, axis=axis) - b)[moving].mean() for k in range(1, 10)))
    return int(np.argmin(errors))


def test_rendering_is_a_function_of_the_seed():
    a = _render(np.random.default_rng([1, 0, 2]), 6, 32, None)
    b = _render(np.random.default_rng([1, 0, 2]), 6, 32, None)
    c = _render(np.random.default_rng([1, 0, 3]), 6, 32, None)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_motion_classes_splits_labels_and_motion(tmp_path):
    lists = ensure_synthetic_dataset(tmp_path, "motion_classes", **CLASSES)
    assert set(lists) == {"train", "val", "test"}
    splits = {k: read_list(v) for k, v in lists.items()}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [24, 4, 4]
    for recs in splits.values():
        assert set(Counter(r.label for r in recs).values()) == {len(recs) // 4}  # balanced
    all_paths = [r.path for recs in splits.values() for r in recs]
    assert len(set(all_paths)) == 32
    correct = 0
    for rec in splits["train"] + splits["val"]:
        correct += _direction(videos.reference_decode(rec.path)) == rec.label
    assert correct >= 0.9 * 28  # the label is the direction of motion
    assert ensure_synthetic_dataset(tmp_path, "motion_classes", **CLASSES) == lists


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        ensure_synthetic_dataset(tmp_path, "faces")
    with pytest.raises(ValueError, match="size"):
        ensure_synthetic_dataset(tmp_path, "pretrain", num_videos=2, num_frames=4, size=33)
    with pytest.raises(ValueError, match="num_videos"):
        ensure_synthetic_dataset(tmp_path, "motion_classes", num_videos=8)
