"""The whole pretraining model for Hugging Face (checkpoint/hf_pretraining.py, ``--format hf_pretraining``):
transformers' VideoMAEForPreTraining loaded from our export reconstructs the masked patches as our space head does,
the time head travels beside it, and our loader rebuilds the exact model, also from VideoMAE's own HF directories."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from motionmae_ds.builders import model_kwargs
from motionmae_ds.checkpoint import CheckpointError, read_weights
from motionmae_ds.checkpoint.hf_pretraining import (
    MOTIONMAE_CONFIG,
    TIME_HEAD_WEIGHTS,
    load_hf_pretraining,
    save_hf_pretraining,
)
from motionmae_ds.config.pretrain import config_from_dict
from motionmae_ds.models import build_mask_generator, build_pretrain_model
from tests.checkpoint.zero_runs import TINY_DECODER, TINY_ENCODER, videos_to_hf

KW = dict(**TINY_ENCODER, **TINY_DECODER)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Every tensor moved off its initial value, so a swapped or dropped tensor changes the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def clip_and_mask(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    videos = torch.randn(2, 3, 4, 32, 32, generator=g)
    return videos, build_mask_generator("tube", model.grid, 0.75)(2, generator=g)


def hf_outputs(path, videos, mask):
    hf = VideoMAEForPreTraining.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(pixel_values=videos_to_hf(videos), bool_masked_pos=mask)


@pytest.mark.parametrize("mode,norm_target", [("divide", False), ("divide", True), ("shared", True)])
def test_hf_reconstruction_equals_our_space_head(tmp_path, mode, norm_target):
    kw = dict(KW, decoder_mode=mode, norm_target=norm_target)
    model = perturbed(build_pretrain_model(**kw))
    out = save_hf_pretraining(tmp_path / "hf", model.state_dict(), kw)
    videos, mask = clip_and_mask(model)
    with torch.no_grad():
        ours = model(videos, mask, return_pred=True)
    theirs = hf_outputs(out, videos, mask)
    # HF's final decoder LayerNorm has eps 1e-5 where ours has 1e-6: a few 1e-6 on outputs of unit scale
    torch.testing.assert_close(theirs.logits, ours["pred_frame"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs.loss, ours["loss_frame"], rtol=1e-5, atol=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["norm_pix_loss"], config["use_mean_pooling"]) == (
        ["VideoMAEForPreTraining"], norm_target, False)
    # the time head beside it, in our names: the divide mode's whole second decoder, or the shared one's layer
    time_head = load_file(str(out / TIME_HEAD_WEIGHTS))
    prefix = "time_head." if mode == "divide" else "decoder.head_motion."
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert sorted(time_head) == sorted(expected) and all(torch.equal(time_head[k], v) for k, v in expected.items())

    # our loader rebuilds the exact model: every tensor bitwise, both heads' predictions
    state, kwargs = load_hf_pretraining(out)
    again = build_pretrain_model(**kwargs).eval()
    again.load_state_dict(state, strict=True)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        rebuilt = again(videos, mask, return_pred=True)
    assert torch.equal(rebuilt["pred_motion"], ours["pred_motion"]) and torch.equal(rebuilt["loss"], ours["loss"])


def test_videomae_own_hf_pretraining_directory_loads_as_a_frame_only_model(tmp_path):
    cfg = VideoMAEConfig(image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=48,
                         num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, qkv_bias=True,
                         use_mean_pooling=False, layer_norm_eps=1e-6, decoder_hidden_size=24,
                         decoder_num_hidden_layers=1, decoder_num_attention_heads=3, decoder_intermediate_size=96,
                         norm_pix_loss=True)
    torch.manual_seed(0)
    hf = perturbed(VideoMAEForPreTraining(cfg))
    hf.save_pretrained(tmp_path / "videomae")
    state, kwargs = load_hf_pretraining(tmp_path / "videomae")
    assert (kwargs["target"], kwargs["decoder_mode"], kwargs["norm_target"]) == ("frame", "divide", True)
    model = build_pretrain_model(**kwargs).eval()
    model.load_state_dict(state, strict=True)
    videos, mask = clip_and_mask(model, seed=3)
    with torch.no_grad():
        ours = model(videos, mask, return_pred=True)
        theirs = hf(pixel_values=videos_to_hf(videos), bool_masked_pos=mask)
    torch.testing.assert_close(ours["pred_frame"], theirs.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting,named", [
    (dict(target="motion"), "model.target='motion'"),
    (dict(pos_embed="sincos_3d"), "model.pos_embed='sincos_3d'"),
    (dict(loss_type="l1"), "model.loss_type='l1'"),
    (dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), "ImageNet"),
])
def test_settings_without_an_hf_equivalent_are_refused_by_name(tmp_path, setting, named):
    kw = dict(KW, **setting)
    model = build_pretrain_model(**kw)
    with pytest.raises(CheckpointError, match="cannot be written as HF VideoMAEForPreTraining") as err:
        save_hf_pretraining(tmp_path / "hf", model.state_dict(), kw, where="run x")
    assert named in str(err.value) and str(err.value).startswith("run x: ")
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == []


def test_cli_exports_a_deepspeed_run_and_refuses_a_classifier(tmp_path, zero2_pretrain, zero2_classifier, convert_cli):
    out = tmp_path / "hf_pre"
    proc = convert_cli("--checkpoint", zero2_pretrain, "--output", out, "--format", "hf_pretraining")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", TIME_HEAD_WEIGHTS, MOTIONMAE_CONFIG])
    state, info = read_weights(zero2_pretrain, exact=True)
    model = build_pretrain_model(**model_kwargs(config_from_dict(info["config"]))).eval()
    model.load_state_dict(state, strict=True)
    videos, mask = clip_and_mask(model, seed=5)
    with torch.no_grad():
        ours = model(videos, mask, return_pred=True)
    torch.testing.assert_close(hf_outputs(out, videos, mask).logits, ours["pred_frame"], rtol=1e-5, atol=1e-5)

    refused = convert_cli("--checkpoint", zero2_classifier, "--output", tmp_path / "no", "--format", "hf_pretraining")
    assert refused.returncode == 2 and not (tmp_path / "no").exists()
    assert refused.stderr.strip().splitlines()[-1].endswith("a finetuned classifier has no decoder; export it with "
                                                            "--format hf"), refused.stderr[-1000:]
