"""Dataset mixtures (data/mixture.py): shares by weight, no replacement inside a source until it is used up,
one order per (seed, epoch), and the mixture's dataset behind the training loop's one sampler."""
from collections import Counter
from pathlib import Path

import pytest
import torch

from motionmae_ds.data.datasets import DataLoadError, VideoClipDataset
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.loader import DistributedSampler, collate_clips
from motionmae_ds.data.mixture import MixtureDataset, MixturePlan, apportion
from motionmae_ds.data.synthetic import ensure_synthetic_dataset


def test_apportion_by_largest_remainder():
    assert apportion(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: the tie goes to the earlier source
    assert apportion(200, [3, 1]) == [150, 50]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert apportion(5, [0, 2]) == [0, 5]
    for bad in ([], [0, 0], [1, -1], [float("nan"), 1]):
        with pytest.raises(ValueError, match="mixture weights"):
            apportion(5, bad)


def test_each_source_is_used_up_before_a_member_repeats():
    plan = MixturePlan(sizes=[4, 6], weights=[3, 1], seed=7)  # 10 places: 8 from the 4 videos, 2 from the 6
    assert plan.per_epoch == [8, 2]
    first = plan.source_draws(0, epoch=0)
    assert sorted(first[:4]) == sorted(first[4:]) == [0, 1, 2, 3]  # two passes over source 0 in epoch 0
    # source 1 gets 2 draws an epoch: epochs 0, 1 and 2 together are one pass over its 6 members
    three = [i for e in range(3) for i in plan.source_draws(1, epoch=e)]
    assert sorted(three) == [4, 5, 6, 7, 8, 9]
    assert sorted(three + plan.source_draws(1, epoch=3) + plan.source_draws(1, epoch=4)
                  + plan.source_draws(1, epoch=5)) == sorted(2 * [4, 5, 6, 7, 8, 9])


def test_order_is_a_function_of_seed_and_epoch_and_counts_follow_the_weights():
    plan = MixturePlan(sizes=[30, 10, 20], weights=[3, 1, 0], seed=1, epoch_len=40)
    again = MixturePlan(sizes=[30, 10, 20], weights=[3, 1, 0], seed=1, epoch_len=40)
    assert plan.epoch_order(2) == again.epoch_order(2)
    assert plan.epoch_order(2) != plan.epoch_order(3)
    assert MixturePlan(sizes=[30, 10, 20], weights=[3, 1, 0], seed=2, epoch_len=40).epoch_order(2) != \
        plan.epoch_order(2)
    for epoch in range(3):
        counts = Counter(plan.source_of(i) for i in plan.epoch_order(epoch))
        assert counts == {0: 30, 1: 10}
    assert [plan.source_of(i) for i in (0, 29, 30, 39, 40, 59)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(IndexError):
        plan.source_of(60)


def _clips(paths, seed):
    records = [VideoRecord(path=str(p), label=0, start=0, num_frames=None, is_frame_dir=False) for p in paths]
    return VideoClipDataset(records, mode="pretrain", num_frames=4, sampling_rate=1, input_size=32, seed=seed,
                            max_retries=2)


def test_the_mixture_dataset_behind_the_plain_sampler(synthetic_cache):
    lst = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    paths = [line.split()[0] for line in Path(lst).read_text().splitlines()]
    # 7 and 5 videos: the second source's members start at dataset index 7, no multiple of its size
    sources = [_clips(paths[:7], seed=1), _clips(paths[7:], seed=2)]
    mixture = MixtureDataset(sources, ["a", "b"], [3, 1], seed=5, epoch_len=8)
    assert len(mixture) == 8 and mixture.plan.per_epoch == [6, 2]
    assert mixture.describe() == ["data.sources[0] a: 7 videos, weight 3: 6 samples per epoch",
                                  "data.sources[1] b: 5 videos, weight 1: 2 samples per epoch"]
    ranks = [DistributedSampler(len(mixture), num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    mixture.set_epoch(1)
    assert [d.epoch for d in sources] == [1, 1]
    for sampler in ranks:
        sampler.set_epoch(1)
    items = [mixture[p] for sampler in ranks for p in sampler]
    assert Counter(item["source"] for item in items) == {0: 6, 1: 2}
    # each place is the source's own item (its record and its augmentation draws), the members those of the plan
    expected = sorted(mixture.plan.epoch_order(1))
    got = sorted(mixture.plan.offsets[item["source"]] + item["index"] for item in items)
    assert got == expected
    for item in items[:3]:
        assert torch.equal(item["video"], sources[item["source"]][item["index"]]["video"])
    mixture.set_epoch(2)
    assert mixture.places != mixture.plan.epoch_order(1)


def test_a_source_that_cannot_deliver_is_named_and_bad_videos_keep_their_source(synthetic_cache, bad_videos):
    lst = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    good = [line.split()[0] for line in Path(lst).read_text().splitlines()]
    broken = [bad_videos["zero_bytes"], bad_videos["text_as_mp4"], bad_videos["missing"]]
    mixture = MixtureDataset([_clips(good[:2], 1), _clips(broken, 2)], ["good", "k600"], [1, 1], seed=0)
    place = next(p for p in range(len(mixture)) if mixture.plan.source_of(mixture.places[p]) == 1)
    with pytest.raises(DataLoadError, match=r"^data.sources\[1\] \(k600\): item \d: 3 videos in a row failed"):
        mixture[place]
    # a bad member of a source is replaced from the same source, and the batch says whose it was
    half = MixtureDataset([_clips(good[:2], 1), _clips([bad_videos["zero_bytes"], good[2]], 2)], ["a", "b"], [1, 1],
                          seed=0)
    items = [half[p] for p in range(len(half))]
    batch = collate_clips(items)
    assert batch["source"].tolist() == [item["source"] for item in items]
    assert batch["skipped_source"] == [1] * len(batch["skipped"]) and len(batch["skipped"]) >= 1
