"""The pretraining model: losses on masked tokens only, decoder token order, head layouts,
activation checkpointing, dtypes and bad settings."""
import pytest
import torch
import torch.nn.functional as F

from motionmae_ds.models import ModelConfigError, build_mask_generator, build_pretrain_model


def test_loss_is_mean_error_over_masked_tokens(videos, half_mask, tiny):
    model = build_pretrain_model(**tiny, loss_weight_frame=0.5, loss_weight_motion=2.0)
    out = model(videos, half_mask, return_pred=True)
    for kind in ("frame", "motion"):
        target = out[f"target_{kind}"][half_mask].reshape(2, 4, -1)  # boolean indexing: ascending order
        assert out[f"pred_{kind}"].shape == target.shape == (2, 4, 1536)
        expected = ((out[f"pred_{kind}"] - target) ** 2).mean()
        torch.testing.assert_close(out[f"loss_{kind}"], expected)
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_frame"] + 2.0 * out["loss_motion"])
    assert out["target_frame"].shape == (2, 8, 1536)


def test_visible_pixels_do_not_enter_the_loss(videos, half_mask, tiny):
    # A zero patch projection makes the predictions independent of the pixels, so any loss change
    # comes from the targets alone.
    model = build_pretrain_model(**tiny)
    with torch.no_grad():
        model.encoder.patch_embed.proj.weight.zero_()
    base = model(videos, half_mask)
    visible = videos.clone()
    visible[1, :, 1, 0:16, 0:16] += 3.0  # frame 1 of token 0 in sample 1 (visible): its frame and motion targets
    masked = videos.clone()
    masked[0, :, 1, 0:16, 0:16] += 3.0   # the same place in sample 0, where token 0 is masked
    out_visible, out_masked = model(visible, half_mask), model(masked, half_mask)
    for key in ("loss", "loss_frame", "loss_motion"):
        assert torch.equal(out_visible[key], base[key])
        assert not torch.equal(out_masked[key], base[key])


@pytest.mark.parametrize("mode", ["divide", "shared"])
def test_decoder_equals_full_sequence_in_token_order(videos, half_mask, tiny, mode):
    """Attention is permutation-equivariant, so laying visible and mask tokens out at their own
    places (with the position of each place) must give the same masked predictions."""
    model = build_pretrain_model(**tiny, decoder_mode=mode).eval()
    out = model(videos, half_mask, return_pred=True)
    x_vis = model.encoder(videos, model.plan_tokens(half_mask)["frame"].visible_ids)
    decoders = ({"frame": (model.space_head, "head"), "motion": (model.time_head, "head")} if mode == "divide"
                else {"frame": (model.decoder, "head_frame"), "motion": (model.decoder, "head_motion")})
    for kind, (dec, head) in decoders.items():
        full = dec.mask_token.expand(2, 8, -1).clone()
        full[~half_mask] = dec.encoder_to_decoder(x_vis).reshape(-1, full.shape[-1])
        x = full + dec.pos_embed
        for blk in dec.blocks:
            x = blk(x)
        expected = getattr(dec, head)(dec.norm(x)[half_mask].reshape(2, 4, -1))
        torch.testing.assert_close(out[f"pred_{kind}"], expected, rtol=1e-4, atol=1e-5)


def block_params(d):
    # norm1, norm2 (2d each), qkv 3d^2, q/v bias 2d, proj d^2 + d, fc1 4d^2 + 4d, fc2 4d^2 + d
    return 12 * d * d + 12 * d


def test_divide_and_shared_parameter_counts(tiny):
    enc_dim, d, p = 192, 96, 1536
    one_decoder = enc_dim * d + d + block_params(d) + 2 * d  # e2d (no bias), mask token, 1 block, norm
    head = d * p + p

    def count(m, prefix):
        return sum(v.numel() for k, v in m.named_parameters() if k.startswith(prefix))

    divide = build_pretrain_model(**tiny, decoder_mode="divide")
    shared = build_pretrain_model(**tiny, decoder_mode="shared")
    assert count(divide, "space_head.") == count(divide, "time_head.") == one_decoder + head
    assert count(shared, "decoder.") == one_decoder + 2 * head
    encoder = count(divide, "encoder.")
    assert encoder == 3 * 2 * 16 * 16 * enc_dim + enc_dim + 2 * block_params(enc_dim) + 2 * enc_dim
    assert count(divide, "") - count(shared, "") == one_decoder
    frame_only = build_pretrain_model(**tiny, target="frame")
    assert not hasattr(frame_only, "time_head")
    assert count(frame_only, "") == encoder + one_decoder + head


def test_state_dict_names(tiny):
    names = set(build_pretrain_model(**tiny).state_dict())
    for n in ["encoder.patch_embed.proj.weight", "encoder.blocks.1.attn.qkv.weight", "encoder.blocks.0.attn.q_bias",
              "encoder.blocks.0.attn.v_bias", "encoder.blocks.0.mlp.fc2.bias", "encoder.norm.weight",
              "space_head.encoder_to_decoder.weight", "space_head.mask_token", "space_head.blocks.0.norm1.weight",
              "space_head.norm.bias", "space_head.head.weight", "time_head.head.bias"]:
        assert n in names, n
    assert not any("pos_embed" in n or "qkv.bias" in n for n in names)
    shared = set(build_pretrain_model(**tiny, decoder_mode="shared").state_dict())
    assert {"decoder.head_frame.weight", "decoder.head_motion.weight", "decoder.mask_token"} <= shared


def test_weight_init(tiny):
    model = build_pretrain_model(**tiny)
    fc1 = model.encoder.blocks[0].mlp.fc1
    bound = (6 / (192 + 768)) ** 0.5
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))
    norm = model.space_head.norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    conv = model.encoder.patch_embed.proj.weight
    assert conv.abs().max() <= (6 / (192 + 1536)) ** 0.5
    assert 0.015 < model.time_head.mask_token.std() < 0.025


@pytest.mark.parametrize("loss_type,fn", [("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)])
def test_other_losses(videos, half_mask, tiny, loss_type, fn):
    out = build_pretrain_model(**tiny, loss_type=loss_type, target="motion")(videos, half_mask, return_pred=True)
    target = out["target_motion"][half_mask].reshape(2, 4, -1)
    torch.testing.assert_close(out["loss_motion"], fn(out["pred_motion"], target))
    assert out["loss_frame"].item() == 0.0 and "pred_frame" not in out
    torch.testing.assert_close(out["loss"], out["loss_motion"])


@pytest.mark.parametrize("mode", ["divide", "shared"])
def test_grad_checkpointing_gives_identical_grads(videos, tiny, mode):
    mask = build_mask_generator("random", (2, 2, 2), 0.5)(2, generator=torch.Generator().manual_seed(0))
    grads, block_runs = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_pretrain_model(**tiny, decoder_mode=mode, drop_path_rate=0.3, grad_checkpointing=ckpt)
        runs = []
        model.encoder.blocks[1].register_forward_pre_hook(lambda *a, runs=runs: runs.append(1))
        torch.manual_seed(123)  # drop path draws
        model(videos, mask)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        block_runs.append(len(runs))
    assert block_runs == [1, 2]  # checkpointing reruns the block in backward (it may stop early)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_set_grad_checkpointing_switches_every_stack(tiny):
    model = build_pretrain_model(**tiny)
    model.set_grad_checkpointing(True)
    assert model.encoder.grad_checkpointing
    assert model.space_head.grad_checkpointing and model.time_head.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not (model.encoder.grad_checkpointing or model.time_head.grad_checkpointing)


def test_bf16_module_and_autocast_return_fp32_loss(videos, half_mask, tiny):
    torch.manual_seed(0)
    model = build_pretrain_model(**tiny)
    ref = model(videos, half_mask)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(videos, half_mask)
    bf16 = build_pretrain_model(**tiny)
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    out = bf16(videos, half_mask)
    for result in (auto, out):
        assert result["loss"].dtype == torch.float32
        torch.testing.assert_close(result["loss"], ref, rtol=0.05, atol=0)
    out["loss"].backward()
    assert bf16.encoder.blocks[0].attn.qkv.weight.grad.dtype == torch.bfloat16


def test_bad_settings_are_named(tiny):
    cases = [
        (dict(name="vit_gigantic"), "vit_gigantic"),
        (dict(num_frames=5), "tubelet_size=2 does not divide num_frames=5"),
        (dict(img_size=40), "patch_size=16 does not divide img_size=40"),
        (dict(decoder_mode="triple"), "decoder_mode='triple'"),
        (dict(target="flow"), "target='flow'"),
        (dict(loss_type="huber"), "loss_type='huber'"),
        (dict(motion_granularity=4), "motion_granularity=4"),
        (dict(pos_embed="learned"), "pos_embed='learned'"),
        (dict(num_heads=5), "num_heads=5 does not divide embed_dim=192"),
        (dict(mean=(0.5, 0.5)), "mean="),
        (dict(mask_ratio=0.9), "unknown argument\\(s\\) mask_ratio"),
    ]
    for override, message in cases:
        with pytest.raises(ModelConfigError, match=message):
            build_pretrain_model(**{**tiny, **override})


def test_bad_inputs_are_named(videos, tiny):
    model = build_pretrain_model(**tiny)
    uneven = torch.tensor([[True] * 4 + [False] * 4, [True] * 3 + [False] * 5])
    with pytest.raises(ValueError, match="same count"):
        model(videos, uneven)
    with pytest.raises(ValueError, match="mask must be bool"):
        model(videos, uneven.long())
    with pytest.raises(ValueError, match="do not match"):
        model(videos[:, :, :2], torch.tensor([[True] * 4 + [False] * 4] * 2))


def test_sincos_3d_option_and_no_weight_decay_names(videos, half_mask, tiny):
    model = build_pretrain_model(**tiny, pos_embed="sincos_3d", decoder_mode="shared")
    assert torch.isfinite(model(videos, half_mask)["loss"])
    assert model.encoder.pos_embed.shape == (1, 8, 192) and model.decoder.pos_embed.shape == (1, 8, 96)
    assert not torch.equal(model.encoder.pos_embed, build_pretrain_model(**tiny).encoder.pos_embed)
    assert model.no_weight_decay() == {"decoder.mask_token"}
