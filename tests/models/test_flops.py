"""The analytic MAC counter against torch's FlopCounterMode (FLOPs = 2 x MACs) on tiny models,
and the registry against MOTIONMAE.md."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motionmae_ds.models import (
    MODEL_SIZES,
    build_classifier,
    build_decoder_mask,
    build_mask_generator,
    build_pretrain_model,
    classifier_macs,
    pretrain_macs,
)
from motionmae_ds.models.attentive import AttentiveProbe
from motionmae_ds.models.flops import attentive_probe_step_macs, block_macs


def counted_macs(model, *inputs) -> int:
    # The math SDPA backend decomposes attention into bmm's that the counter sees; the fused CPU
    # kernel has no flop formula registered.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def test_classifier_macs_match_flop_counter(tiny_clf):
    kwargs = {**tiny_clf, "num_frames": 8, "img_size": 48, "depth": 3}
    clf = build_classifier(**kwargs)
    assert classifier_macs(**kwargs) == counted_macs(clf, torch.randn(1, 3, 8, 48, 48))


@pytest.mark.parametrize("queries", [1, 4])
def test_attentive_probe_step_macs_match_flop_counter_forward_and_backward(tiny_clf, queries):
    # one training step of the probe as torch counts it: the frozen encoder's forward, the pooler and head forward
    # and backward (no encoder backward, no gradient for the encoder's tokens)
    kwargs = {**tiny_clf, "num_frames": 8, "img_size": 48, "depth": 3}
    probe = AttentiveProbe(build_classifier(**kwargs), num_queries=queries).train()
    videos = torch.randn(1, 3, 8, 48, 48)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        probe(videos).square().sum().backward()
    assert all(p.grad is None for n, p in probe.named_parameters() if not n.startswith(("pooler.", "backbone.head.")))
    flops = counter.get_total_flops()
    assert attentive_probe_step_macs(num_queries=queries, **kwargs) == flops // 2 and flops % 2 == 0
    # a finetuning step of the same encoder (forward and backward, 3 x its forward) costs more than twice as much
    assert 3 * classifier_macs(**kwargs) > 2 * attentive_probe_step_macs(num_queries=queries, **kwargs)


@pytest.mark.parametrize("mode,target,kind,ratio", [
    ("divide", "frame_motion", "random", 0.75), ("shared", "frame_motion", "tube", 0.5),
    ("divide", "motion", "frame", 0.5), ("shared", "frame", "random", 0.9)])
def test_pretrain_macs_match_flop_counter(tiny, mode, target, kind, ratio):
    kwargs = {**tiny, "num_frames": 8, "img_size": 64, "decoder_mode": mode, "target": target}
    model = build_pretrain_model(**kwargs)
    mask = build_mask_generator(kind, model.grid, ratio)(1, generator=torch.Generator().manual_seed(0))
    assert pretrain_macs(mask_ratio=ratio, mask_kind=kind, **kwargs) == counted_macs(
        model, torch.randn(1, 3, 8, 64, 64), mask)


@pytest.mark.parametrize("mode,heads,ratio", [
    ("divide", "shared", 0.5), ("divide", "complementary", 0.5), ("divide", "complementary", 0.25),
    ("shared", "shared", 0.75)])
def test_decoder_masked_macs_match_flop_counter(tiny, mode, heads, ratio):
    # tube masks over four slices: every sample keeps exactly (1 - ratio) of its masked tokens, no padding
    kwargs = {**tiny, "num_frames": 8, "img_size": 64, "decoder_mode": mode}
    model = build_pretrain_model(**kwargs)
    gen = torch.Generator().manual_seed(0)
    mask = build_mask_generator("tube", model.grid, 0.75)(1, generator=gen)
    keep = build_decoder_mask(grid=model.grid, ratio=ratio, heads=heads)(1, generator=gen)
    macs = pretrain_macs(mask_ratio=0.75, mask_kind="tube", decoder_ratio=ratio, decoder_heads=heads, **kwargs)
    assert macs == counted_macs(model, torch.randn(1, 3, 8, 64, 64), mask, False, keep)
    assert macs < pretrain_macs(mask_ratio=0.75, mask_kind="tube", **kwargs)


def test_vit_base_decoder_masking_by_hand():
    # 16 x 224: 160 visible tokens, 1408 masked, half of them decoded by each of the two decoders
    vis, kept, d, dec, p = 160, 704, 768, 384, 1536
    encoder = 1568 * p * d + 12 * block_macs(vis, d)
    decoder = vis * d * dec + 4 * block_macs(vis + kept, dec) + kept * dec * p
    assert pretrain_macs(0.9, "tube", decoder_ratio=0.5, name="vit_base") == encoder + 2 * decoder


def test_vit_base_by_hand():
    n, d = 1568, 768
    by_hand = n * 1536 * d + 12 * (12 * n * d * d + 2 * n * n * d) + d * 174
    assert classifier_macs(name="vit_base", num_classes=174) == by_hand
    assert block_macs(n, d) == 12 * n * d * d + 2 * n * n * d


def test_macs_reject_unknown_kwargs():
    with pytest.raises(ValueError, match="unknown argument\\(s\\) decoder_mode"):
        classifier_macs(name="vit_base", decoder_mode="divide")
    with pytest.raises(ValueError, match="mask_ratio=1.0"):
        pretrain_macs(mask_ratio=1.0, name="vit_base")


def test_registry_matches_spec():
    table = {name: (s.embed_dim, s.depth, s.num_heads, s.decoder_embed_dim, s.decoder_depth, s.decoder_num_heads)
             for name, s in MODEL_SIZES.items()}
    assert table == {"vit_tiny": (192, 12, 3, 96, 4, 3), "vit_small": (384, 12, 6, 192, 4, 3),
                     "vit_base": (768, 12, 12, 384, 4, 6), "vit_large": (1024, 24, 16, 512, 4, 8),
                     "vit_huge": (1280, 32, 16, 640, 4, 8)}
