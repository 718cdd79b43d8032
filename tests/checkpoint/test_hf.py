"""HF transformers VideoMAE interop: exports from real ZeRO-2 checkpoints give our outputs in transformers
(< 1e-4 relative, fp32); ours -> HF -> ours is exact; HF pretraining/encoder directories come back in."""
import json

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

from motionmae_ds.checkpoint import CheckpointError, load_into
from motionmae_ds.checkpoint.hf import (
    encoder_kwargs,
    export_directory,
    hf_to_ours,
    load_hf_videomae,
    ours_to_hf,
    save_hf_videomae,
)
from motionmae_ds.models import build_classifier, build_pretrain_model
from motionmae_ds.tools.convert import export
from tests.checkpoint.zero_runs import TINY_DECODER as DEC
from tests.checkpoint.zero_runs import TINY_ENCODER as ENC
from tests.checkpoint.zero_runs import videos_to_hf


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def fp32(ckpt):
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=(ckpt / "latest").read_text().strip())


def clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def shake(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norms and biases, so a swapped or dropped tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if "bias" in name else 1.0))
    return model.eval()


def test_hf_export_of_pretraining_checkpoint_matches_encoder(zero2_pretrain, tmp_path):
    out = export(zero2_pretrain, tmp_path / "hf", "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    hf, info = VideoMAEModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert json.loads((out / "config.json").read_text())["use_mean_pooling"] is False  # HF applies our norm
    model = build_pretrain_model(**ENC, **DEC)
    model.load_state_dict(fp32(zero2_pretrain))
    hf.eval(), model.eval()
    videos = clip()
    with torch.no_grad():
        ours = model.encoder(videos)
        theirs = hf(pixel_values=videos_to_hf(videos)).last_hidden_state
    assert ours.shape == theirs.shape == (2, 8, 48)
    assert rel_err(theirs, ours) < 1e-4
    assert rel_err(theirs.mean(1), ours.mean(1)) < 1e-4


def test_hf_export_of_classifier_checkpoint_matches_logits(zero2_classifier, tmp_path):
    out = export(zero2_classifier, tmp_path / "hf_clf", "hf")
    hf, info = VideoMAEForVideoClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    clf = build_classifier(**ENC, num_classes=5)
    clf.load_state_dict(fp32(zero2_classifier))
    hf.eval(), clf.eval()
    videos = clip(1)
    with torch.no_grad():
        theirs = hf(pixel_values=videos_to_hf(videos)).logits
        ours = clf(videos)
        pooled_theirs = hf.fc_norm(hf.videomae(videos_to_hf(videos)).last_hidden_state.mean(1))
        pooled_ours = clf.forward_features(videos)
    assert rel_err(theirs, ours) < 1e-4
    assert rel_err(pooled_theirs, pooled_ours) < 1e-4


def test_round_trip_ours_hf_ours_is_exact(tmp_path):
    torch.manual_seed(0)
    encoder = shake(build_pretrain_model(**ENC, **DEC)).encoder.state_dict()
    save_hf_videomae(tmp_path / "enc", encoder, ENC)
    back, kwargs = load_hf_videomae(tmp_path / "enc")
    assert sorted(back) == sorted(encoder) and all(torch.equal(back[k], encoder[k]) for k in encoder)
    assert kwargs == encoder_kwargs(ENC) | {"in_chans": 3}

    clf = shake(build_classifier(**ENC, num_classes=7)).state_dict()
    save_hf_videomae(tmp_path / "clf", clf, ENC)
    back, kwargs = load_hf_videomae(tmp_path / "clf")
    assert sorted(back) == sorted(clf) and all(torch.equal(back[k], clf[k]) for k in clf)
    assert kwargs["num_classes"] == 7
    rebuilt = build_classifier(**kwargs)
    rebuilt.load_state_dict(back, strict=True)
    # in memory too: straight into transformers' modules and back
    hf = VideoMAEForVideoClassification(VideoMAEConfig(**json.loads((tmp_path / "clf" / "config.json").read_text())))
    hf.load_state_dict(ours_to_hf(clf, module_names=True), strict=True)
    again, _ = hf_to_ours(hf.state_dict())
    assert all(torch.equal(again[k], clf[k]) for k in clf)


def test_sincos_3d_and_learned_tables_are_refused(tmp_path):
    model = build_pretrain_model(**ENC, **DEC, pos_embed="sincos_3d")
    with pytest.raises(CheckpointError, match="sincos_3d"):
        save_hf_videomae(tmp_path / "x", model.encoder.state_dict(), dict(ENC, pos_embed="sincos_3d"))
    state = dict(build_classifier(**ENC, num_classes=3).state_dict(), pos_embed=torch.zeros(1, 8, 48))
    with pytest.raises(CheckpointError, match="learned pos_embed"):
        save_hf_videomae(tmp_path / "x", state, ENC)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("qv_bias", [True, False])
def test_hf_pretraining_directory_initialises_our_encoder(tmp_path, qv_bias):
    torch.manual_seed(0)
    cfg = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=48,
                         num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, qv_bias=qv_bias,
                         use_mean_pooling=False, layer_norm_eps=1e-6, decoder_hidden_size=24,
                         decoder_num_hidden_layers=1, decoder_num_attention_heads=3, decoder_intermediate_size=96)
    hf = shake(VideoMAEForPreTraining(cfg))
    hf.save_pretrained(tmp_path / "hf_pre")
    state, kwargs = load_hf_videomae(tmp_path / "hf_pre")
    assert "norm.weight" in state and not any("decoder" in k for k in state)
    # transformers 5 writes q_bias/v_bias to disk but names them query/value.bias in memory: both read the same
    in_memory, dropped = hf_to_ours(hf.state_dict())
    assert dropped and sorted(in_memory) == sorted(state)
    assert all(torch.equal(in_memory[k], state[k]) for k in state)
    model = build_pretrain_model(**kwargs, **DEC).eval()
    report = load_into(model, tmp_path / "hf_pre", "continue_pretraining")
    assert report.missing == []
    videos = clip(2)
    with torch.no_grad():
        theirs = hf.videomae(videos_to_hf(videos)).last_hidden_state
        ours = model.encoder(videos)
    assert rel_err(theirs, ours) < 1e-4

    # the CLI path: an HF directory in, our encoder format out
    out = export(tmp_path / "hf_pre", tmp_path / "enc.pth", "encoder")
    enc = torch.load(out, weights_only=True)
    assert all(torch.equal(enc[k], v) for k, v in model.encoder.state_dict().items())


def test_bad_hf_directories(tmp_path):
    hf = VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, hidden_size=48, num_hidden_layers=1,
                                      num_attention_heads=3, intermediate_size=192))
    hf.save_pretrained(tmp_path / "ok")
    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be read"):
        load_hf_videomae(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text("{\n  \"model_type\": \"videomae\",\n  oops\n}")
    with pytest.raises(CheckpointError, match=r"config.json:3: invalid JSON"):
        load_hf_videomae(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="not a DeepSpeed checkpoint directory"):
        export(tmp_path, tmp_path / "out.pth", "plain")  # neither HF nor DeepSpeed
    assert not (tmp_path / "out.pth").exists()


def test_export_directory_replaces_only_on_success(tmp_path):
    # both HF writers go through it: an export that fails half-way leaves the old directory (or none) and no temp
    out = tmp_path / "hf"
    with pytest.raises(CheckpointError, match="exists"):
        with export_directory(tmp_path, force=False):
            pass
    with export_directory(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError, match="disk full"):
        with export_directory(out, force=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"] and (out / "a.txt").read_text() == "first"
    with export_directory(out, force=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
