"""Targets against explicit per-element loops: patch layout, frame differences, patch norm."""
import statistics

import pytest
import torch

from motionmae_ds.models import build_pretrain_model
from motionmae_ds.models.targets import normalize_per_token, patchify, temporal_difference, unpatchify


def loop_patchify(x: torch.Tensor, ps: int, tub: int) -> torch.Tensor:
    """Token (ti hi wi), value ((p0 * ps + p1) * ps + p2) * C + c, one element at a time."""
    b, c, t, h, w = x.shape
    gt, gh, gw = t // tub, h // ps, w // ps
    out = torch.empty(b, gt * gh * gw, tub * ps * ps * c, dtype=x.dtype)
    for bi in range(b):
        for ti in range(gt):
            for hi in range(gh):
                for wi in range(gw):
                    n = (ti * gh + hi) * gw + wi
                    for p0 in range(tub):
                        for p1 in range(ps):
                            for p2 in range(ps):
                                for ci in range(c):
                                    out[bi, n, ((p0 * ps + p1) * ps + p2) * c + ci] = \
                                        x[bi, ci, ti * tub + p0, hi * ps + p1, wi * ps + p2]
    return out


def loop_difference(x: torch.Tensor, g: int, signed: bool) -> torch.Tensor:
    t = x.shape[2]
    frames = []
    for i in range(t):
        j = min(i, t - 1 - g)  # frames without a successor reuse the last valid difference
        d = x[:, :, j + g] - x[:, :, j]
        frames.append(d if signed else d.abs())
    return torch.stack(frames, dim=2)


def test_patchify_matches_loops_and_inverts():
    x = torch.randn(1, 3, 4, 8, 8)
    p = patchify(x, 4, 2)
    assert p.shape == (1, 8, 96)
    assert torch.equal(p, loop_patchify(x, 4, 2))
    assert torch.equal(unpatchify(p, (2, 2, 2), 4, 2), x)


def test_patchify_uneven_sides_and_model_methods_match_loops(tiny):
    # a (2, 2, 3) grid of 3 x 4 x 4 tubelets with two channels: no two axes of the same length
    x = torch.randn(2, 2, 6, 8, 12)
    p = patchify(x, 4, 3)
    assert torch.equal(p, loop_patchify(x, 4, 3))
    assert torch.equal(unpatchify(p, (2, 2, 3), 4, 3), x)
    model = build_pretrain_model(**tiny)
    videos = torch.randn(2, 3, 4, 32, 32)
    assert torch.equal(model.patchify(videos), loop_patchify(videos, 16, 2))
    assert torch.equal(model.unpatchify(model.patchify(videos)), videos)


@pytest.mark.parametrize("g,signed", [(1, False), (2, False), (1, True), (3, True)])
def test_temporal_difference_matches_loop(g, signed):
    x = torch.rand(2, 3, 6, 4, 4)
    assert torch.equal(temporal_difference(x, g, signed), loop_difference(x, g, signed))


def test_temporal_difference_by_hand():
    # One pixel with values 0, 1, 3, 6 over time: differences 1, 2, 3 and the last one repeated.
    x = torch.tensor([0.0, 1.0, 3.0, 6.0]).reshape(1, 1, 4, 1, 1)
    assert temporal_difference(x, 1).flatten().tolist() == [1.0, 2.0, 3.0, 3.0]
    assert temporal_difference(x, 2).flatten().tolist() == [3.0, 5.0, 5.0, 5.0]
    assert temporal_difference(-x, 1, signed=True).flatten().tolist() == [-1.0, -2.0, -3.0, -3.0]


def test_model_motion_target_is_patched_frame_difference(videos, tiny):
    model = build_pretrain_model(**tiny, motion_granularity=1)
    mean = torch.tensor(model.mean).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(model.std).reshape(1, 3, 1, 1, 1)
    pixels = videos * std + mean
    expected = loop_patchify(loop_difference(pixels, 1, False), 16, 2)
    torch.testing.assert_close(model.motion_target(videos), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.frame_target(videos), loop_patchify(pixels, 16, 2), rtol=0, atol=1e-6)


def test_norm_target_per_channel_over_tubelet(videos, tiny):
    model = build_pretrain_model(**tiny, norm_target=True)
    target = model.frame_target(videos)
    pixels = (videos * torch.tensor(model.std).reshape(1, 3, 1, 1, 1)
              + torch.tensor(model.mean).reshape(1, 3, 1, 1, 1)).double()
    # Token 7 of sample 1 = tubelet 1, row 1, column 1; channel 2; unbiased std as VideoMAE.
    values = pixels[1, 2, 2:4, 16:32, 16:32].flatten().tolist()
    mu, sd = statistics.fmean(values), statistics.stdev(values)
    assert len(values) == 512
    got = target[1, 7].reshape(512, 3)[:, 2]
    expected = torch.tensor([(v - mu) / (sd + 1e-6) for v in values])
    torch.testing.assert_close(got.double(), expected.double(), rtol=0, atol=1e-5)
    # And the normalisation is the one applied to the raw patches.
    torch.testing.assert_close(normalize_per_token(model.patchify(pixels.float()), 3), target)


def test_targets_stay_fp32_in_bf16_model(videos, tiny):
    model = build_pretrain_model(**tiny).to(torch.bfloat16)
    ref = build_pretrain_model(**tiny)
    assert model.frame_target(videos).dtype == torch.float32
    # mean/std are not buffers, so the bf16 cast cannot round them: targets equal the fp32 model's.
    assert torch.equal(model.motion_target(videos), ref.motion_target(videos))


@pytest.mark.parametrize("shape,patch,tubelet",
                         [((2, 3, 4, 8, 12), 4, 2), ((1, 1, 6, 6, 6), 3, 3), ((3, 2, 2, 4, 4), 2, 1)])
def test_patches_at_equals_patchify_then_gather(shape, patch, tubelet):
    from motionmae_ds.models.targets import patches_at

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    full = patchify(x, patch, tubelet)
    b, n, p = full.shape
    ids = torch.stack([torch.randperm(n, generator=g)[: max(1, n // 2)] for _ in range(b)])
    expected = torch.gather(full, 1, ids[..., None].expand(-1, -1, p))
    assert torch.equal(patches_at(x, ids, patch, tubelet), expected)
    # a non-contiguous clip (the difference's output is contiguous, but callers may pass views)
    xt = x.transpose(3, 4).contiguous().transpose(3, 4)
    assert torch.equal(patches_at(xt, ids, patch, tubelet), expected)


@pytest.mark.parametrize("norm_target", [False, True])
def test_training_targets_equal_the_figure_path(norm_target):
    # training reads only the masked tokens' targets; the figure path builds every token's and gathers:
    # the same losses, bit for bit
    from motionmae_ds.models import build_mask_generator

    model = build_pretrain_model(name="vit_tiny", num_frames=4, img_size=32, patch_size=8, depth=1,
                                 decoder_depth=1, norm_target=norm_target, motion_granularity=1).eval()
    g = torch.Generator().manual_seed(0)
    mask = build_mask_generator("random", model.grid, 0.75)(2, generator=g)
    videos = torch.randn(2, 3, 4, 32, 32, generator=g)
    with torch.no_grad():
        fast, full = model(videos, mask), model(videos, mask, return_pred=True)
    for key in ("loss", "loss_frame", "loss_motion"):
        assert torch.equal(fast[key], full[key]) and fast[key] > 0


def test_normalization_tensors_are_made_once_per_device():
    # a new tensor from Python floats in every forward would be a blocking host-to-device copy on a GPU
    from motionmae_ds.models.targets import normalization_tensors, unnormalize

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    videos = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    first = normalization_tensors(mean, std, videos.device)
    out = unnormalize(videos, list(mean), list(std))  # lists as configs hold them: the same cache entry
    assert all(a is b for a, b in zip(first, normalization_tensors(mean, std, videos.device)))
    by_hand = videos * torch.tensor(std).reshape(1, 3, 1, 1, 1) + torch.tensor(mean).reshape(1, 3, 1, 1, 1)
    assert torch.equal(out, by_hand)
