"""Mask generators: exact counts, the structure of each kind, reproducibility, bad values."""
import pytest
import torch

from motionmae_ds.models import ModelConfigError, build_mask_generator

GRID = (8, 14, 14)  # the ViT-B 16x224 grid


def draw(kind, ratio, batch=6, seed=0, grid=GRID):
    gen = build_mask_generator(kind, grid, ratio)
    return gen, gen(batch, generator=torch.Generator().manual_seed(seed))


def test_random_masks_exact_ratio_in_every_slice():
    gen, mask = draw("random", 0.9)
    assert mask.dtype == torch.bool and mask.shape == (6, 8 * 196)
    per_slice = mask.reshape(6, 8, 196).sum(-1)
    assert (per_slice == 176).all()  # floor(0.9 * 196)
    assert gen.num_masked == 8 * 176 and gen.num_visible == 8 * 20
    # Slices draw independently: not a tube.
    m = mask.reshape(6, 8, 196)
    assert not (m == m[:, :1]).all()


def test_tube_repeats_one_spatial_mask_over_time():
    gen, mask = draw("tube", 0.75)
    m = mask.reshape(6, 8, 196)
    assert (m == m[:, :1]).all()
    assert (m.sum(-1) == 147).all()  # floor(0.75 * 196)
    assert (mask.sum(1) == gen.num_masked).all()
    assert not (m[0] == m[1]).all()  # samples differ


def test_frame_masks_whole_slices():
    gen, mask = draw("frame", 0.75)
    m = mask.reshape(6, 8, 196)
    slice_all = m.all(-1)
    slice_none = ~m.any(-1)
    assert (slice_all | slice_none).all()
    assert (slice_all.sum(-1) == 6).all()  # floor(0.75 * 8)
    assert gen.num_masked == 6 * 196


def test_float_rounding_of_counts():
    # 0.29 * 100 is 28.999999999999996 in floating point; the intended count is 29.
    gen = build_mask_generator("tube", (1, 10, 10), 0.29)
    assert gen.num_masked == 29


def test_same_generator_seed_same_masks_and_device_follows_generator():
    _, a = draw("random", 0.5, seed=3)
    _, b = draw("random", 0.5, seed=3)
    _, c = draw("random", 0.5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.device == torch.device("cpu")


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_named(ratio):
    with pytest.raises(ValueError, match=f"mask_ratio={ratio}"):
        build_mask_generator("random", GRID, ratio)


def test_bad_kind_and_degenerate_counts():
    with pytest.raises(ModelConfigError, match="'blocks'"):
        build_mask_generator("blocks", GRID, 0.9)
    with pytest.raises(ModelConfigError, match="masks 0 of the 8 temporal slices"):
        build_mask_generator("frame", GRID, 0.1)
    with pytest.raises(ModelConfigError, match="grid"):
        build_mask_generator("random", None, 0.9)
