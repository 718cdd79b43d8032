"""Decoder masking (VideoMAE V2's running cell, for both heads): the pattern's counts, shift and phase;
losses against a per-sample reference that runs each decoder on exactly the visible and the kept masked
tokens; keeping every token reproduces the paper's model bit for bit; bad settings."""
import pytest
import torch

from motionmae_ds.models import ModelConfigError, build_decoder_mask, build_mask_generator, build_pretrain_model
from motionmae_ds.models.masking import MaskCounts, RunningCellDecoderMask
from tests.models.decoder_reference import reference_head

KEEP_PLACES = {0.25: 3, 0.5: 2, 0.75: 1}


def places(keep: torch.Tensor, grid) -> torch.Tensor:
    """(B, t*h*w) -> (B, t, h/2, w/2, 4): each 2x2 cell's four places in raster order."""
    t, h, w = grid
    x = keep.reshape(-1, t, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(-1, t, h // 2, w // 2, 4)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_every_sample_and_cell_keeps_the_same_count(ratio):
    grid = (5, 4, 6)
    gen = build_decoder_mask(grid=grid, ratio=ratio)
    keep = gen(16, generator=torch.Generator().manual_seed(0))["frame"]
    assert keep.dtype == torch.bool and keep.shape == (16, 5 * 4 * 6)
    kept = KEEP_PLACES[ratio]
    assert keep.sum(dim=1).tolist() == [5 * 4 * 6 * kept // 4] * 16 == [gen.num_kept] * 16
    assert (places(keep, grid).sum(dim=-1) == kept).all()


def test_pattern_moves_on_by_one_place_per_slice():
    gen = RunningCellDecoderMask((4, 2, 2), 0.5)
    # phase 0 keeps places {0, 1} at slice 0, {1, 2} at slice 1, {2, 3}, then {3, 0}
    expected = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]]
    assert gen.keep_for(torch.tensor([0])).reshape(4, 4).int().tolist() == expected
    # a phase shifts the whole pattern: phase p at slice t is phase 0 at slice t + p
    grid = (7, 4, 4)
    for ratio in (0.25, 0.5, 0.75):
        gen = RunningCellDecoderMask(grid, ratio)
        cells = places(gen.keep_for(torch.arange(4)), grid)  # (4 phases, t, 2, 2, 4)
        for t in range(grid[0] - 1):
            assert torch.equal(cells[:, t + 1], cells[:, t].roll(1, dims=-1))
        for p in range(4):
            assert torch.equal(cells[p, 0], cells[0, 0].roll(p, dims=-1))
        # every cell of a slice has the same pattern
        assert (cells == cells[:, :, :1, :1]).all()


def test_phase_varies_over_samples_and_follows_the_seed():
    gen = build_decoder_mask(grid=(2, 4, 4), ratio=0.5)

    def draw(seed):
        return gen(64, generator=torch.Generator().manual_seed(seed))["frame"]

    first = places(draw(3), (2, 4, 4))[:, 0, 0, 0]  # slice 0 of one cell: which places each sample keeps
    patterns = {tuple(row.int().tolist()) for row in first}
    assert patterns == {(1, 1, 0, 0), (0, 1, 1, 0), (0, 0, 1, 1), (1, 0, 0, 1)}
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("ratio,union_places,overlap_places", [(0.5, 4, 0), (0.75, 2, 0), (0.25, 4, 2)])
def test_complementary_heads(ratio, union_places, overlap_places):
    grid = (6, 4, 4)
    gen = build_decoder_mask(grid=grid, ratio=ratio, heads="complementary")
    keep = gen(32, generator=torch.Generator().manual_seed(0))
    frame, motion = places(keep["frame"], grid), places(keep["motion"], grid)
    assert ((frame | motion).sum(-1) == union_places).all()
    assert ((frame & motion).sum(-1) == overlap_places).all()
    # the time head's window starts where the space head's ends
    assert torch.equal(motion, frame.roll(KEEP_PLACES[ratio], dims=-1))
    shared = build_decoder_mask(grid=grid, ratio=ratio)(4, generator=torch.Generator().manual_seed(0))
    assert shared["frame"] is shared["motion"]


def test_complementary_at_half_splits_every_masked_token_between_the_heads():
    grid = (4, 4, 4)
    mask = build_mask_generator("random", grid, 0.75)(8, generator=torch.Generator().manual_seed(0))
    keep = build_decoder_mask(grid=grid, ratio=0.5, heads="complementary")(
        8, generator=torch.Generator().manual_seed(1))
    frame, motion = mask & keep["frame"], mask & keep["motion"]
    assert not (frame & motion).any()
    assert torch.equal(frame | motion, mask)


def test_bad_decoder_masks():
    with pytest.raises(ModelConfigError, match="odd side"):
        build_decoder_mask(grid=(2, 3, 4), ratio=0.5)
    with pytest.raises(ModelConfigError, match="0.3 is not one of 0.25, 0.5, 0.75"):
        build_decoder_mask(grid=(2, 4, 4), ratio=0.3)
    with pytest.raises(ModelConfigError, match="decoder heads"):
        build_decoder_mask(grid=(2, 4, 4), ratio=0.5, heads="both")
    with pytest.raises(ModelConfigError, match="decoder mask kind"):
        build_decoder_mask(kind="tube", grid=(2, 4, 4), ratio=0.5)
    assert build_decoder_mask(grid=(2, 3, 3), ratio=0.0) is None


# -- the model with decoder masking ---------------------------------------------------------------


@pytest.mark.parametrize("heads", ["shared", "complementary"])
@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_loss_is_mse_over_masked_and_kept_tokens(videos, half_mask, tiny, heads, backend):
    model = build_pretrain_model(**tiny, loss_weight_frame=0.5, loss_weight_motion=2.0)
    model.set_attention_backend(backend)
    gen = RunningCellDecoderMask(model.grid, 0.5, heads)
    # phases 0 and 1: sample 0 keeps 3 of its masked tokens for the space head, sample 1 keeps 2, so
    # the batch is padded and the padding must change nothing
    frame = gen.keep_for(torch.tensor([0, 1]))
    keep = {"frame": frame, "motion": frame if heads == "shared" else gen.keep_for(torch.tensor([2, 3]))}
    assert (half_mask & frame).sum(1).tolist() == [3, 2]
    out = model(videos, half_mask, decoder_keep=keep)
    for kind in ("frame", "motion"):
        sse, count = reference_head(model, videos, half_mask, keep[kind], kind)
        torch.testing.assert_close(out[f"loss_{kind}"], sse / count, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_frame"] + 2.0 * out["loss_motion"])


def test_padding_is_invisible_to_each_sample(videos, half_mask, tiny):
    # Sample 1 keeps fewer tokens than sample 0, so it is padded in the batch: the batch's sum of squared
    # errors, and its gradient, must be sample 0's alone plus sample 1's from the unpadded reference.
    model = build_pretrain_model(**tiny, target="frame")
    keep = RunningCellDecoderMask(model.grid, 0.5).keep_for(torch.tensor([0, 1]))
    counts = (half_mask & keep).sum(1).tolist()
    assert counts == [3, 2]
    weight = model.encoder.patch_embed.proj.weight

    def sse_and_grad(value):
        return value.detach(), torch.autograd.grad(value, weight)[0]

    p = model.patch_dim
    both = sse_and_grad(model(videos, half_mask, decoder_keep=keep)["loss"] * sum(counts) * p)
    alone = sse_and_grad(model(videos[:1], half_mask[:1], decoder_keep=keep[:1])["loss"] * counts[0] * p)
    other = sse_and_grad(reference_head(model, videos[1:], half_mask[1:], keep[1:], "frame")[0])
    torch.testing.assert_close(both[0], alone[0] + other[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], alone[1] + other[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["divide", "shared"])
@pytest.mark.parametrize("dtype,backend", [(torch.float32, "sdpa"), (torch.bfloat16, "matmul")])
def test_keeping_every_token_is_bitwise_the_paper_model(videos, half_mask, tiny, mode, dtype, backend):
    """The decoder-masked path with nothing dropped computes exactly what decoder_keep=None computes:
    the same token order, the same targets, the same loss, the same gradients, bit for bit."""
    torch.manual_seed(0)
    model = build_pretrain_model(**tiny, decoder_mode=mode, drop_path_rate=0.1).to(dtype)
    model.set_attention_backend(backend)
    results = []
    for keep in (None, torch.ones_like(half_mask)):
        torch.manual_seed(1)  # the same drop-path draws
        out = model(videos.to(dtype), half_mask, decoder_keep=keep)
        grads = torch.autograd.grad(out["loss"], list(model.parameters()))
        results.append((out, grads))
    (ref, ref_grads), (got, got_grads) = results
    for key in ("loss", "loss_frame", "loss_motion"):
        assert torch.equal(ref[key], got[key]), key
    for (name, _), a, b in zip(model.named_parameters(), ref_grads, got_grads):
        assert torch.equal(a, b), name


def test_decoder_masking_cuts_the_decoded_tokens(videos, half_mask, tiny):
    # what each decoder is handed: visible tokens plus the longest kept set, never every masked token
    model = build_pretrain_model(**tiny)
    seen = {}
    for name in ("space_head", "time_head"):
        getattr(model, name).register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(name, args[1].shape[1]))
    gen = RunningCellDecoderMask(model.grid, 0.5, "complementary")
    keep = {"frame": gen.keep_for(torch.tensor([0, 1])), "motion": gen.keep_for(torch.tensor([2, 3]))}
    model(videos, half_mask, decoder_keep=keep)
    assert seen == {"space_head": 4 + 3, "time_head": 4 + 2}
    model(videos, half_mask)
    assert seen == {"space_head": 8, "time_head": 8}


def test_bad_decoder_keep(videos, half_mask, tiny):
    model = build_pretrain_model(**tiny)
    with pytest.raises(ModelConfigError, match="no entry for the motion head"):
        model(videos, half_mask, decoder_keep={"frame": torch.ones_like(half_mask)})
    with pytest.raises(ModelConfigError, match="must be bool"):
        model(videos, half_mask, decoder_keep=torch.ones(2, 8))
    with pytest.raises(ModelConfigError, match="return_pred"):
        model(videos, half_mask, return_pred=True, decoder_keep=torch.ones_like(half_mask))
    shared = build_pretrain_model(**tiny, decoder_mode="shared")
    with pytest.raises(ModelConfigError, match="same decoder_keep"):
        shared(videos, half_mask, decoder_keep={"frame": torch.ones_like(half_mask),
                                                "motion": torch.zeros_like(half_mask)})


def test_each_head_keeping_everything_with_static_counts_is_bitwise_the_paper_model(videos, half_mask, tiny):
    """Two distinct all-True keeps (one plan per head) under static counts give the plain step, bit for bit."""
    torch.manual_seed(0)
    model = build_pretrain_model(**tiny, drop_path_rate=0.1)
    keep = {"frame": torch.ones_like(half_mask), "motion": torch.ones_like(half_mask)}
    results = []
    for kwargs in (dict(counts=MaskCounts(4)), dict(decoder_keep=keep, counts=MaskCounts(4, 4, 4))):
        torch.manual_seed(1)
        out = model(videos, half_mask, **kwargs)
        results.append((out, torch.autograd.grad(out["loss"], list(model.parameters()))))
    (ref, ref_grads), (got, got_grads) = results
    for key in ("loss", "loss_frame", "loss_motion"):
        assert torch.equal(ref[key], got[key]), key
    for (name, _), a, b in zip(model.named_parameters(), ref_grads, got_grads):
        assert torch.equal(a, b), name


def test_decoders_return_predictions_by_name(videos, half_mask, tiny):
    plan = build_pretrain_model(**tiny).plan_tokens(half_mask)["frame"]
    for mode, decoders in (("divide", {"space_head": ["frame"], "time_head": ["motion"]}),
                           ("shared", {"decoder": ["frame", "motion"]})):
        model = build_pretrain_model(**tiny, decoder_mode=mode)
        x_vis = model.forward_encoder(videos, plan.visible_ids)
        for name, kinds in decoders.items():
            decoder = getattr(model, name)
            preds = decoder(x_vis, plan.order)
            assert list(preds) == kinds
            features = decoder.forward_features(x_vis, plan.order)
            for kind in kinds:
                layer = decoder.head if mode == "divide" else getattr(decoder, f"head_{kind}")
                assert preds[kind].shape == (2, 4, model.patch_dim)
                assert torch.equal(preds[kind], layer(features))


@pytest.mark.parametrize("mode,heads,sorts", [("divide", None, 1), ("divide", "shared", 1),
                                              ("divide", "complementary", 2), ("shared", "shared", 1)])
def test_heads_decoding_the_same_tokens_share_one_sort(monkeypatch, videos, half_mask, tiny, mode, heads, sorts):
    model = build_pretrain_model(**tiny, decoder_mode=mode)
    keep = None if heads is None else RunningCellDecoderMask(model.grid, 0.5, heads)(2)
    calls = []
    argsort = torch.argsort
    monkeypatch.setattr(torch, "argsort", lambda *a, **k: calls.append(1) or argsort(*a, **k))
    model(videos, half_mask, decoder_keep=keep)
    assert len(calls) == sorts


def test_running_cell_offsets_are_copied_to_a_device_once():
    from motionmae_ds.models.masking import build_decoder_mask

    dec = build_decoder_mask(kind="running_cell", grid=(4, 4, 4), ratio=0.5, heads="shared")
    gen = torch.Generator().manual_seed(0)
    first = dec(3, generator=gen)
    offsets = dict(dec._offsets)
    second = dec(3, generator=gen)
    assert dec._offsets.keys() == offsets.keys() and all(dec._offsets[d] is t for d, t in offsets.items())
    assert first["frame"].shape == second["frame"].shape == (3, 64)
