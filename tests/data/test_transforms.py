import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionmae_ds.data.finishing import finish_clips, normalize_batch, pack_items
from motionmae_ds.data.transforms import (
    ClipRandAugment,
    EvalTransform,
    TrainTransform,
    as_tchw,
    normalize,
    random_erase,
    resize_short_side,
    resized_crop,
    sample_resized_crop_box,
)
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD


def _clip(t=4, h=24, w=32, seed=0):
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _train(tf: TrainTransform, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The worker's draws for ``clip`` (T, H, W, 3), finished as the step does (on the CPU): float (3, T, S, S)."""
    view = tf.view(clip.shape[1], clip.shape[2], range(clip.shape[0]), generator)
    return finish_clips(pack_items([clip], [[view]]), torch.device("cpu"), tf.input_size, IMAGENET_MEAN,
                        IMAGENET_STD)[0]


def _ref_normalize(frames_thwc: np.ndarray) -> np.ndarray:
    x = frames_thwc.astype(np.float64) / 255.0
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(3, 0, 1, 2)  # (3, T, H, W)


def test_normalize_hand_values_and_layout():
    frames = torch.zeros((2, 1, 3, 3), dtype=torch.uint8)
    frames[0, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    frames[1, 0, 2] = torch.tensor([255, 255, 255], dtype=torch.uint8)
    out = normalize(as_tchw(frames), IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (3, 2, 1, 3) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-5)
    assert out[1, 0, 0, 0].item() == pytest.approx((128 / 255 - 0.456) / 0.224, abs=1e-5)
    assert out[2, 0, 0, 0].item() == pytest.approx((1 - 0.406) / 0.225, abs=1e-5)
    assert out[0, 1, 0, 2].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
    clip = _clip()
    out = normalize(as_tchw(clip), IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(out.numpy(), _ref_normalize(clip.numpy()), atol=1e-5)


def test_as_tchw_accepts_both_layouts_and_rejects_others():
    clip = _clip()
    tchw = as_tchw(clip)
    assert tchw.shape == (4, 3, 24, 32)
    assert torch.equal(as_tchw(tchw.contiguous()), tchw)
    with pytest.raises(ValueError, match="3 channels"):
        as_tchw(torch.zeros(4, 5, 6, 7, dtype=torch.uint8))


def test_crop_without_resize_is_exact_and_resize_matches_float_reference():
    clip = _clip(t=3, h=40, w=50)
    out = resized_crop(clip, (5, 7, 20, 20), 20)
    assert torch.equal(out, clip[:, 5:25, 7:27, :].permute(0, 3, 1, 2))
    out = resized_crop(clip, (5, 7, 30, 36), 16)
    ref = F.interpolate(clip[:, 5:35, 7:43].permute(0, 3, 1, 2).double(), size=(16, 16), mode="bilinear",
                        antialias=True, align_corners=False)
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.uint8
    assert (out.double() - ref).abs().max() <= 1.0
    # A constant frame stays constant through crop + resize.
    const = torch.full((2, 30, 40, 3), 77, dtype=torch.uint8)
    assert torch.all(resized_crop(const, (0, 0, 30, 40), 12) == 77)


def test_resize_short_side_keeps_aspect():
    assert resize_short_side(_clip(t=1, h=24, w=32), 12).shape == (1, 3, 12, 16)
    assert resize_short_side(_clip(t=1, h=32, w=24), 12).shape == (1, 3, 16, 12)


def test_crop_boxes_respect_scale_ratio_and_bounds():
    gen = torch.Generator().manual_seed(3)
    for _ in range(500):
        top, left, h, w = sample_resized_crop_box(120, 160, (0.5, 1.0), (3 / 4, 4 / 3), gen)
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        assert 0.5 - 0.02 <= h * w / (120 * 160) <= 1.0
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03
    # A frame far wider than any allowed aspect: the fallback is the largest centred 4:3 crop.
    assert sample_resized_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), gen) == (0, 493, 10, 13)


def test_flip_really_flips_and_can_be_disabled():
    clip = _clip(t=2, h=16, w=16, seed=5)
    plain = _ref_normalize(clip.numpy())
    flipped = plain[..., ::-1]
    tf = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    seen = set()
    for seed in range(20):
        out = _train(tf, clip, torch.Generator().manual_seed(seed)).numpy()
        if np.allclose(out, flipped, atol=1e-5):
            seen.add("flip")
        else:
            np.testing.assert_allclose(out, plain, atol=1e-5)
            seen.add("plain")
    assert seen == {"flip", "plain"}
    tf = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    for seed in range(10):
        np.testing.assert_allclose(_train(tf, clip, torch.Generator().manual_seed(seed)).numpy(), plain, atol=1e-5)


def test_train_transform_is_a_function_of_the_generator_seed():
    clip = _clip(t=4, h=48, w=64)
    tf = TrainTransform(32, rand_aug="rand-m9-mstd0.5-inc1", random_erase=0.5)

    def draw(seed):  # the RandAug path: the worker finishes the uint8 clip, then draws the erasing
        gen = torch.Generator().manual_seed(seed)
        return tf(clip, gen)[0], tf.erase_view(range(4), gen)

    (a, va), (b, vb), (c, _) = draw(11), draw(11), draw(12)
    assert a.shape == (4, 32, 32, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and va == vb and not torch.equal(a, c)
    plain = TrainTransform(32, random_erase=0.5)
    views = [plain.view(48, 64, range(4), torch.Generator().manual_seed(s)) for s in (11, 11, 12)]
    assert views[0] == views[1] != views[2]


def test_randaug_applies_one_op_sequence_to_all_frames():
    aug = ClipRandAugment("rand-m9-n3-mstd0.5-inc1-p1.0")
    assert (aug.magnitude, aug.num_ops, aug.magnitude_std, aug.increasing, aug.prob) == (9.0, 3, 0.5, True, 1.0)
    clip = as_tchw(_clip(t=3, h=20, w=20, seed=7)).contiguous()
    changed = 0
    for seed in range(40):
        ops = aug.sample_ops(torch.Generator().manual_seed(seed))
        out = aug(clip, torch.Generator().manual_seed(seed))
        # Reference: the same op sequence applied to each frame on its own.
        for t in range(clip.shape[0]):
            frame = clip[t : t + 1]
            for op, level, sign in ops:
                frame = aug._apply(op, frame, level, sign)
            assert torch.equal(out[t : t + 1], frame), (seed, ops)
        changed += not torch.equal(out, clip)
        # Identical frames in -> identical frames out.
        same = clip[:1].expand(3, -1, -1, -1).contiguous()
        out_same = aug(same, torch.Generator().manual_seed(seed))
        assert torch.equal(out_same[0], out_same[1]) and torch.equal(out_same[0], out_same[2])
    assert changed >= 30


def test_randaug_bad_config_names_the_field():
    with pytest.raises(ValueError, match="rand-"):
        ClipRandAugment("augmix-m9")
    with pytest.raises(ValueError, match="'x3'"):
        ClipRandAugment("rand-m9-x3")


def test_random_erase_same_box_in_every_frame():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        clip = torch.full((3, 4, 32, 32), 100.0)
        random_erase(clip, 1.0, gen)
        erased = clip != 100.0
        assert erased.any()
        box = erased[:, 0]
        for t in range(4):
            assert torch.equal(erased[:, t], box)
        rows = torch.nonzero(box[0].any(1)).flatten()
        cols = torch.nonzero(box[0].any(0)).flatten()
        frac = len(rows) * len(cols) / (32 * 32)
        assert 0.015 <= frac <= 1 / 3 + 0.02
        assert box[0].sum() == len(rows) * len(cols)  # one rectangle
    clip = torch.full((3, 4, 32, 32), 100.0)
    assert torch.all(random_erase(clip, 0.0, gen) == 100.0)


def test_eval_three_crops_along_longer_side():
    clip = _clip(t=2, h=24, w=32, seed=9)
    ref = _ref_normalize(clip.numpy())
    raw = EvalTransform(20, 24, num_crops=3)(clip)
    assert raw.dtype == torch.uint8  # normalised on the device
    views = normalize_batch(raw, IMAGENET_MEAN, IMAGENET_STD)
    assert views.shape == (3, 3, 2, 20, 20)
    for v, x in zip(views, (0, 6, 12)):
        np.testing.assert_allclose(v.numpy(), ref[:, :, 2:22, x : x + 20], atol=1e-5)
    centre = normalize_batch(EvalTransform(20, 24)(clip), IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(centre.numpy(), ref[:, :, 2:22, 6:26], atol=1e-5)
    with pytest.raises(ValueError, match="short_side_size"):
        EvalTransform(32, 24)
    assert math.isfinite(float(centre.sum()))
