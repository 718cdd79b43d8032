"""Tiny model settings shared by the model tests: 4 frames of 32x32, tubelet 2x16x16 -> a (2, 2, 2)
token grid, so hand references stay small and every test runs in well under a second."""
import pytest
import torch

TINY = dict(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, depth=2,
            decoder_depth=1)
TINY_CLF = dict(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, patch_size=16, tubelet_size=2,
                depth=2)


@pytest.fixture
def tiny() -> dict:
    return dict(TINY)


@pytest.fixture
def tiny_clf() -> dict:
    return dict(TINY_CLF)


@pytest.fixture
def videos() -> torch.Tensor:
    """A normalised clip batch (B=2) with smooth structure, so frame differences are not noise only."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 4, 32, 32, generator=g)


@pytest.fixture
def half_mask() -> torch.Tensor:
    """Two masked tokens of four in each temporal slice, different per sample."""
    return torch.tensor([[True, False, False, True, False, True, True, False],
                         [False, True, True, False, True, True, False, False]])
