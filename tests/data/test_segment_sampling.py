"""Segment sampling (``data.sampling: segment``, VideoMAE's SSv2 protocol): indices by hand, VideoMAE's test
views, the training draw's support and distribution, and the dataset decoding exactly those frames."""
import math

import numpy as np
import pytest
import torch

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.finishing import normalize_batch
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.sampling import (
    eval_indices,
    make_generator,
    segment_eval_indices,
    segment_train_indices,
    train_indices,
)
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

from clip_reference import assert_same_clip, assert_same_frames, finished, old_train_clip  # isort: skip

# Hand-computed with T = 16 segments of n / 16 frames: starts floor(k n / 16), centres floor((k + 1/2) n / 16).
HAND = {
    10: dict(starts=[0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 8, 8, 9],
             centres=[0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 9, 9]),
    16: dict(starts=list(range(16)), centres=list(range(16))),
    47: dict(starts=[0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44],
             centres=[1, 4, 7, 10, 13, 16, 19, 22, 24, 27, 30, 33, 36, 39, 42, 45]),
    300: dict(starts=[0, 18, 37, 56, 75, 93, 112, 131, 150, 168, 187, 206, 225, 243, 262, 281],
              centres=[9, 28, 46, 65, 84, 103, 121, 140, 159, 178, 196, 215, 234, 253, 271, 290]),
}


def _videomae_test_views(n: int, t: int) -> tuple[list[int], list[int]]:
    # VideoMAE's SSv2 test indices, written from its description: tick = n / t, centres int(tick / 2 + tick k),
    # starts int(tick k).
    tick = n / float(t)
    return [int(tick / 2.0 + tick * k) for k in range(t)], [int(tick * k) for k in range(t)]


@pytest.mark.parametrize("n", sorted(HAND))
def test_test_views_are_the_centres_and_the_starts(n):
    centres, starts = segment_eval_indices(n, 16, 2)
    assert centres == HAND[n]["centres"] and starts == HAND[n]["starts"]
    assert (centres, starts) == _videomae_test_views(n, 16)
    # one view (validation) is the centres; the dispatcher gives the same
    assert segment_eval_indices(n, 16, 1) == [centres]
    assert eval_indices("segment", n, 16, 2, 2) == [centres, starts]


@pytest.mark.parametrize("n", sorted(HAND))
def test_training_takes_one_frame_inside_each_segment(n):
    t, seg = 16, n / 16
    gen = torch.Generator().manual_seed(n)
    seen = [set() for _ in range(t)]
    for _ in range(2000):
        idx = segment_train_indices(n, t, gen)
        assert len(idx) == t and idx == sorted(idx)
        for k, f in enumerate(idx):
            # frame f covers [f, f + 1): it must overlap segment [k seg, (k + 1) seg)
            assert f < (k + 1) * seg and f + 1 > k * seg, (n, k, f)
            seen[k].add(f)
    for k in range(t):  # every frame overlapping a segment is drawn for it
        assert seen[k] == set(range(math.floor(k * seg), math.ceil((k + 1) * seg))), (n, k)
    if n >= t:  # all segments together cover the whole video
        assert set().union(*seen) == set(range(n))


def test_training_draw_is_proportional_to_overlap():
    # n = 47: segment 0 is [0, 2.9375): frames 0 and 1 fully, frame 2 for 0.9375 of a frame.
    gen = torch.Generator().manual_seed(0)
    draws = np.array([segment_train_indices(47, 16, gen)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=3)[:3] / len(draws)
    np.testing.assert_allclose(freq, np.array([1, 1, 0.9375]) / 2.9375, atol=0.015)


def test_training_draw_is_a_function_of_the_generator():
    a = segment_train_indices(300, 16, make_generator(1, 2, 3))
    assert a == segment_train_indices(300, 16, make_generator(1, 2, 3))
    assert a != segment_train_indices(300, 16, make_generator(1, 2, 4))
    assert train_indices("segment", 300, 16, 4, make_generator(1, 2, 3)) == a
    # start_idx shifts every index (VideoMAEv2 lists); the stride plays no part
    assert segment_train_indices(300, 16, make_generator(1, 2, 3), start_idx=7) == [i + 7 for i in a]


def test_more_test_views_spread_evenly_inside_the_segments():
    # K = 4: offsets 1/2, 3/4, 0, 1/4 of a 4-frame segment (n = 64, T = 16) -> frames 4k + 2, 3, 0, 1
    views = segment_eval_indices(64, 16, 4)
    assert views == [[4 * k + o for k in range(16)] for o in (2, 3, 0, 1)]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sampling must be one of dense, segment"):
        train_indices("tsn", 10, 4, 1)
    with pytest.raises(ValueError, match="test_clips"):
        segment_eval_indices(10, 4, 0)
    with pytest.raises(ValueError, match="num_frames of the video"):
        segment_train_indices(0, 4)


def _norm(frames: np.ndarray) -> np.ndarray:
    x = (frames.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(3, 0, 1, 2)


@pytest.mark.parametrize("name", ("h264", "avi_bframes", "short10"))
def test_dataset_decodes_the_segment_frames(name, good_videos, reference):
    ref = reference(good_videos[name])
    rec = VideoRecord(str(good_videos[name]), 4, 0, None, False)
    n, t = len(ref), 8
    test = VideoClipDataset([rec], mode="test", num_frames=t, input_size=48, short_side_size=48,
                            test_clips=2, test_crops=1, sampling="segment")
    video = test[0]["video"]
    for view, idx in enumerate(segment_eval_indices(n, t, 2)):
        np.testing.assert_allclose(normalize_batch(video[view], IMAGENET_MEAN, IMAGENET_STD).numpy(),
                                   _norm(ref[idx][:, :, 8:56]), atol=1e-5)
    val = VideoClipDataset([rec], mode="val", num_frames=t, input_size=48, short_side_size=48, sampling="segment")
    assert torch.equal(val[0]["video"], video[0])
    # training: the dataset's documented draw for (seed, epoch, index, attempt) picks the frames, then the
    # same generator drives the augmentation
    train = VideoClipDataset([rec], mode="train", num_frames=t, input_size=32, flip=False, seed=3,
                             sampling="segment")
    train.set_epoch(1)
    gen = make_generator(3, 1, 0, 0)
    idx = segment_train_indices(n, t, gen)
    item = train[0]
    assert_same_frames(item, item["views"][0].positions, ref[idx])
    assert_same_clip(finished(item, 32)[0], old_train_clip(torch.from_numpy(ref[idx]), gen, 32, flip=False), item)


def test_pretraining_refuses_segment_sampling(good_videos):
    rec = VideoRecord(str(good_videos["h264"]), 0, 0, None, False)
    with pytest.raises(ValueError, match="pretraining: dense"):
        VideoClipDataset([rec], mode="pretrain", sampling="segment")
