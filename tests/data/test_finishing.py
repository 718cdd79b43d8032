"""The device's part of a clip (data/finishing.py): the same clips as the pre-#33 worker path for the same draws,
random erasing from the worker's box and seed, 4:2:0 boxes converted like whole frames, and nothing copied from the
host in the step but the batch itself."""
from __future__ import annotations

import pytest
import torch

from motionmae_ds.data.finishing import PackedClips, View, finish_clips, pack_items, yuv_to_rgb
from motionmae_ds.data.transforms import TrainTransform
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD
from tests.models.test_no_host_copies import HostCopies

from clip_reference import PIXEL_BOUND, old_train_clip, pixel_error  # isort: skip

CPU, META = torch.device("cpu"), torch.device("meta")


def _frames(t=6, h=40, w=56, seed=0):
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_device_clips_equal_the_worker_path_for_the_same_draws():
    tf = TrainTransform(24, scale=(0.3, 1.0), flip=True)
    flips = set()
    for seed in range(30):
        frames = _frames(seed=seed)
        view = tf.view(40, 56, range(6), torch.Generator().manual_seed(seed))
        new = finish_clips(pack_items([frames], [[view]]), CPU, 24, IMAGENET_MEAN, IMAGENET_STD)[0]
        old = old_train_clip(frames, torch.Generator().manual_seed(seed), 24, scale=(0.3, 1.0))
        assert new.shape == (3, 6, 24, 24) and new.dtype == torch.float32 and new.is_contiguous()
        assert pixel_error(new, old) <= PIXEL_BOUND, seed
        flips.add(view.flip)
    assert flips == {True, False}


def test_views_pick_their_frames_in_any_order():
    frames = _frames(t=8)
    for positions in ((0, 2, 4, 6), (7, 3, 3, 1), (1, 2, 5, 6)):
        box = (0, 0, 40, 56)
        out = finish_clips(pack_items([frames], [[View(positions, box)]]), CPU, 16, IMAGENET_MEAN, IMAGENET_STD)
        for k, p in enumerate(positions):
            single = finish_clips(pack_items([frames[p:p + 1]], [[View((0,), box)]]), CPU, 16, IMAGENET_MEAN,
                                  IMAGENET_STD)
            assert torch.equal(out[0, :, k], single[0, :, 0]), (positions, k)


def test_random_erasing_fills_the_drawn_box_in_every_frame_from_the_seed():
    tf = TrainTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, random_erase=1.0)
    frames = torch.full((4, 32, 32, 3), 100, dtype=torch.uint8)
    view = tf.view(32, 32, range(4), torch.Generator().manual_seed(3))
    assert view.erase is not None
    top, left, h, w, _ = view.erase
    out = finish_clips(pack_items([frames], [[view]]), CPU, 32, IMAGENET_MEAN, IMAGENET_STD)[0]
    plain = torch.tensor([(100 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1, 1)
    erased = ~torch.isclose(out, plain.expand_as(out))
    box = torch.zeros(32, 32, dtype=torch.bool)
    box[top:top + h, left:left + w] = True
    assert torch.equal(erased, box.expand(3, 4, 32, 32))  # one rectangle, the same in every frame
    again = finish_clips(pack_items([frames], [[view]]), CPU, 32, IMAGENET_MEAN, IMAGENET_STD)[0]
    assert torch.equal(out, again)  # the noise is a function of the worker's seed
    noise = out[:, :, top:top + h, left:left + w]
    assert abs(float(noise.mean())) < 0.2 and 0.8 < float(noise.std()) < 1.2


def test_yuv_boxes_convert_like_the_whole_frame():
    g = torch.Generator().manual_seed(0)
    h, w = 12, 16
    i420 = torch.randint(16, 236, (3, h * 3 // 2, w), dtype=torch.uint8, generator=g)
    whole = yuv_to_rgb(i420, (0, 1, 2), (0, 0, h, w), "bt601")
    for box in ((0, 0, h, w), (1, 3, 7, 9), (2, 2, 10, 14), (3, 1, 1, 1)):
        top, left, bh, bw = box
        part = yuv_to_rgb(i420, (2, 0), box, "bt601")
        assert torch.equal(part, whole[[2, 0], :, top:top + bh, left:left + bw]), box
    # hand values: mid grey luma with neutral chroma is grey; BT.601 vs BT.709 differ on coloured pixels
    grey = torch.full((1, 6, 4), 128, dtype=torch.uint8)
    grey[0, :4] = 126  # Y; (126 - 16) * 255 / 219 = 128.08 -> 128
    assert torch.equal(yuv_to_rgb(grey, (0,), (0, 0, 4, 4), "bt601"), torch.full((1, 3, 4, 4), 128.0))
    red = grey.clone()
    red[0, 5] = 240  # V (Cr) high: red
    assert not torch.equal(yuv_to_rgb(red, (0,), (0, 0, 4, 4), "bt601"), yuv_to_rgb(red, (0,), (0, 0, 4, 4), "bt709"))


def test_packed_batch_moves_as_pinned_items_and_counts_items():
    frames = [_frames(t=4), _frames(t=3, seed=1)]
    views = [[View((0, 1), (0, 0, 8, 8)), View((2, 3), (0, 0, 8, 8))], [View((0, 1), (1, 1, 8, 8))] * 2]
    packed = pack_items(frames, views)
    assert len(packed) == 2 and packed.num_clips == 4 and packed.clips_per_item == 2
    assert packed.frames[0].data_ptr() == frames[0].data_ptr()  # the batch holds the workers' frames, not copies
    with pytest.raises(ValueError, match="same number of clips"):
        pack_items(frames, [views[0], views[1][:1]])
    with pytest.raises(ValueError, match="frame format"):
        pack_items(frames, views, ["rgb", "yuv444"])


@pytest.mark.parametrize("erase", [False, True])
def test_the_finishing_copies_nothing_from_the_host_but_the_batch(erase):
    frames = [_frames(t=4), _frames(t=4, seed=1)]
    i420 = torch.randint(0, 256, (4, 60, 56), dtype=torch.uint8)
    views = [[View((0, 1, 2, 3), (2, 3, 30, 40), True, (1, 2, 5, 6, 7) if erase else None)],
             [View((3, 2, 1, 0), (0, 0, 40, 56))]]
    device = CPU if erase else META  # a generator on the meta device cannot draw the noise
    for batch in (pack_items(frames, views), pack_items([frames[0], i420], views, ["rgb", "bt601"])):
        finish_clips(batch, device, 16, IMAGENET_MEAN, IMAGENET_STD)  # mean/std made once per device here
        with HostCopies() as seen:
            out = finish_clips(batch, device, 16, IMAGENET_MEAN, IMAGENET_STD)
        assert out.shape == (2, 3, 4, 16, 16)
        moved = [f for f in seen.found if f.startswith("_to_copy")]
        assert len(moved) == (0 if device == CPU else 2) and len(seen.found) == len(moved), seen.found


def test_evaluation_batches_are_normalised_in_place_of_the_worker():
    clips = torch.randint(0, 256, (2, 3, 3, 4, 8, 8), dtype=torch.uint8)
    out = finish_clips(clips, CPU, 8, IMAGENET_MEAN, IMAGENET_STD)
    ref = (clips.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1, 1)
    assert out.shape == clips.shape and torch.allclose(out.double(), ref, atol=1e-5)
    assert not isinstance(clips, PackedClips)
