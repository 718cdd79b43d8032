"""Dataset mixtures (data/mixture.py): shares by weight, no replacement inside a source until it is used up,
one order per (seed, epoch), and the distributed sampler over it."""
from collections import Counter

import pytest

from motionmae_ds.data.mixture import MixturePlan, MixtureSampler, apportion


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


def test_sampler_splits_the_mixture_between_ranks_and_resumes_mid_epoch():
    plan = MixturePlan(sizes=[5, 3], weights=[1, 1], seed=3)  # 8 places a epoch, 4 per source
    ranks = [MixtureSampler(plan, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    shares = [list(s) for s in ranks]
    assert sorted(shares[0] + shares[1]) == sorted(plan.epoch_order(1)) and len(shares[0]) == 4
    resumed = MixtureSampler(plan, num_replicas=2, rank=1)
    resumed.set_epoch(1)
    resumed.set_start(3)
    assert list(resumed) == shares[1][3:]
