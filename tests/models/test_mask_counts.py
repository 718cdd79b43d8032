"""Static mask counts (masking.mask_counts): the bounds every drawn mask obeys, hand-computed values, and the
model's step with them reads nothing back from the device yet computes what the host-checked path computes."""
import pytest
import torch

from motionmae_ds.models import ModelConfigError, build_decoder_mask, build_mask_generator, build_pretrain_model
from motionmae_ds.models.masking import MaskCounts, mask_counts


@pytest.mark.parametrize("kind", ["random", "tube", "frame"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("grid", [(8, 4, 4), (5, 4, 6)])
def test_every_draw_lies_within_the_static_counts(kind, ratio, grid):
    masker = build_mask_generator(kind, grid, 0.75 if kind != "frame" else 0.6)
    for heads in ("shared", "complementary"):
        decoder = build_decoder_mask(grid=grid, ratio=ratio, heads=heads)
        counts = mask_counts(masker, decoder)
        gen = torch.Generator().manual_seed(0)
        mask = masker(256, generator=gen)
        keeps = decoder(256, generator=gen)
        assert (mask.sum(1) == counts.num_masked).all()
        for keep in keeps.values():
            kept = (mask & keep).sum(1)
            assert counts.kept_min <= int(kept.min()) and int(kept.max()) <= counts.kept_max
        if kind == "frame" or (kind == "tube" and grid[0] % 4 == 0):
            assert counts.kept_min == counts.kept_max  # exact, no padding at all


def test_static_counts_by_hand():
    grid = (8, 4, 4)
    decoder = build_decoder_mask(grid=grid, ratio=0.5)
    # random 0.75: 12 of 16 masked per slice, the cell keeps 8 of 16: 4..8 per slice, 8 slices
    assert mask_counts(build_mask_generator("random", grid, 0.75), decoder) == MaskCounts(96, 32, 64)
    # tube over 8 slices: each masked place kept in 4 of them: 12 * 4
    assert mask_counts(build_mask_generator("tube", grid, 0.75), decoder) == MaskCounts(96, 48, 48)
    # frame 0.5: 4 whole slices, 8 kept in each
    assert mask_counts(build_mask_generator("frame", grid, 0.5), decoder) == MaskCounts(64, 32, 32)
    assert mask_counts(build_mask_generator("random", grid, 0.75)) == MaskCounts(96)
    with pytest.raises(ModelConfigError, match="differs from the mask grid"):
        mask_counts(build_mask_generator("random", grid, 0.75), build_decoder_mask(grid=(4, 4, 4), ratio=0.5))


def _no_host_reads(monkeypatch):
    """Make every device-to-host read of a tensor (what a CUDA sync in the step would be) raise."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host inside the step")

    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("decoder_ratio", [0.0, 0.5])
def test_step_with_static_counts_reads_nothing_back(monkeypatch, tiny, decoder_ratio):
    tiny = dict(tiny, num_frames=8, img_size=64)  # (4, 4, 4) grid: the running cell needs even sides
    torch.manual_seed(0)
    model = build_pretrain_model(**tiny, drop_path_rate=0.1)
    masker = build_mask_generator("random", model.grid, 0.75)
    decoder = build_decoder_mask(grid=model.grid, ratio=decoder_ratio, heads="complementary")
    counts = mask_counts(masker, decoder)
    gen = torch.Generator().manual_seed(3)
    videos = torch.randn(3, 3, 8, 64, 64, generator=gen)
    mask = masker(3, generator=gen)
    keep = decoder(3, generator=gen) if decoder is not None else None
    torch.manual_seed(1)
    reference = model(videos, mask, decoder_keep=keep)  # counts read on the host: padded to the batch's most
    with monkeypatch.context() as m:
        _no_host_reads(m)
        torch.manual_seed(1)
        static = model(videos, mask, decoder_keep=keep, counts=counts)  # padded to the static bound
        static["loss"].backward()
    for key in ("loss", "loss_frame", "loss_motion"):
        torch.testing.assert_close(static[key], reference[key], rtol=1e-5, atol=1e-6)
    if decoder is None:
        assert torch.equal(static["loss"], reference["loss"])
    # the old path does read: the guard is real
    with monkeypatch.context() as m:
        _no_host_reads(m)
        with pytest.raises(AssertionError, match="read on the host"):
            model(videos, mask, decoder_keep=keep)


def test_bad_static_counts(videos, half_mask, tiny):
    model = build_pretrain_model(**tiny)
    with pytest.raises(ModelConfigError, match="counts.num_masked=8"):
        model(videos, half_mask, counts=MaskCounts(8))
    with pytest.raises(ModelConfigError, match="kept_min/kept_max"):
        model(videos, half_mask, decoder_keep=torch.ones_like(half_mask), counts=MaskCounts(4))
