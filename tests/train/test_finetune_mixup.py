"""Mixup / cutmix on 5-D clips against hand-computed values; soft targets sum to 1."""
import numpy as np
import pytest
import torch

from motionmae_ds.train.mixup import VideoMixup, cutmix_box, cutmix_clips, mix_targets, mixup_clips, smooth_one_hot


def _clips(b=4, c=3, t=4, h=6, w=8):
    # distinct value at every position, so a value tells where it came from
    return torch.arange(b * c * t * h * w, dtype=torch.float32).reshape(b, c, t, h, w)


def test_smooth_one_hot_values():
    y = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(y, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))
    assert torch.allclose(y.sum(1), torch.ones(2))


def test_mixup_exact_values():
    x = _clips()
    out = mixup_clips(x, 0.3)
    for i in range(4):
        j = 3 - i  # batch mode pairs each clip with the mirrored position
        assert torch.equal(out[i], x[i] * 0.3 + x[j] * 0.7)
    t = mix_targets(torch.tensor([0, 1, 2, 3]), 4, 0.3, 0.0)
    assert torch.allclose(t[0], torch.tensor([0.3, 0.0, 0.0, 0.7]))
    assert torch.allclose(t.sum(1), torch.ones(4))


def test_cutmix_box_on_height_width_for_all_frames():
    x = _clips()
    out = cutmix_clips(x, (1, 4, 2, 7))  # rows 1..3, cols 2..6 of every frame and channel
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[1:4, 2:7] = True
    for i in range(4):
        j = 3 - i
        expected = torch.where(inside, x[j], x[i])  # broadcast over (C, T)
        assert torch.equal(out[i], expected)
    assert torch.equal(x, _clips())  # input untouched


def test_cutmix_box_lambda_is_the_kept_area():
    rng = np.random.default_rng(3)
    for lam in (0.1, 0.5, 0.9):
        (top, bottom, left, right), lam_adj = cutmix_box(14, 14, lam, rng)
        assert 0 <= top <= bottom <= 14 and 0 <= left <= right <= 14
        assert lam_adj == pytest.approx(1 - (bottom - top) * (right - left) / 196)


def test_video_mixup_end_to_end_matches_its_draws():
    x, y = _clips(), torch.tensor([0, 1, 2, 3])
    mix = VideoMixup(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)
    kinds = set()
    for seed in range(12):
        out, targets = mix(x, y, np.random.default_rng(seed))
        # replay the same draws by hand
        rng = np.random.default_rng(seed)
        kind, lam = mix.draw(rng)
        kinds.add(kind)
        if kind == "cutmix":
            box, lam = cutmix_box(6, 8, lam, rng)
            expected = cutmix_clips(x, box)
        else:
            expected = mixup_clips(x, lam)
        assert torch.equal(out, expected)
        off = 0.1 / 4
        hard = torch.full((4, 4), off)
        hard[torch.arange(4), y] = 0.9 + off
        assert torch.allclose(targets, lam * hard + (1 - lam) * hard.flip(0))
        assert torch.allclose(targets.sum(1), torch.ones(4))
    assert kinds == {"mixup", "cutmix"}


def test_video_mixup_rejects_bad_input():
    mix = VideoMixup(num_classes=4)
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        mix(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="even batch"):
        mix(torch.zeros(3, 3, 2, 8, 8), torch.zeros(3, dtype=torch.long))
