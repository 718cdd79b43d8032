"""The finetuning classifier: forward against its definition, init, names, encoder loading."""
import pytest
import torch

from motionmae_ds.models import PROBE_NORMS, LinearProbe, ModelConfigError, build_classifier, build_pretrain_model
from motionmae_ds.models.vit import VisionTransformerEncoder


def test_forward_is_mean_pool_fc_norm_head(videos, tiny_clf):
    clf = build_classifier(**tiny_clf, init_scale=1.0).eval()
    x = clf.patch_embed(videos) + clf.pos_embed
    for blk in clf.blocks:
        x = blk(x)
    features = clf.fc_norm(x.mean(dim=1))
    torch.testing.assert_close(clf.forward_features(videos), features)
    torch.testing.assert_close(clf(videos), features @ clf.head.weight.T + clf.head.bias)
    assert clf(videos).shape == (2, 5)


def test_head_init_is_scaled(tiny_clf):
    torch.manual_seed(0)
    clf = build_classifier(**{**tiny_clf, "num_classes": 50}, init_scale=0.001)
    std = clf.head.weight.std().item()
    assert 0.9 * 0.02e-3 < std < 1.1 * 0.02e-3
    assert clf.head.bias.abs().max() < 1e-4
    assert torch.equal(clf.fc_norm.weight, torch.ones(192))


def test_names_follow_videomae_finetune_model(tiny_clf):
    names = set(build_classifier(**tiny_clf).state_dict())
    assert {"patch_embed.proj.weight", "blocks.1.attn.q_bias", "blocks.0.mlp.fc1.weight", "fc_norm.weight",
            "head.weight", "head.bias"} <= names
    assert not any(n.startswith("norm.") for n in names)


def test_classifier_names_are_the_pretraining_encoders(tiny, tiny_clf):
    """A pretraining encoder's weights load into the classifier by name: the same names and shapes, apart from
    the encoder's final norm (the classifier's fc_norm replaces it) and the classifier's head."""
    enc = {k[len("encoder."):]: v.shape for k, v in build_pretrain_model(**tiny).state_dict().items()
           if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    clf = {k: v.shape for k, v in build_classifier(**tiny_clf).state_dict().items()
           if not k.startswith(("fc_norm.", "head."))}
    assert enc == clf and "blocks.1.attn.qkv.weight" in clf


def test_layer_ids_for_layer_decay(tiny_clf):
    clf = build_classifier(**tiny_clf)
    assert clf.get_num_layers() == 2
    assert [clf.layer_id(n) for n in ("patch_embed.proj.weight", "blocks.0.norm1.bias", "blocks.1.mlp.fc2.weight",
                                      "fc_norm.weight", "head.bias")] == [0, 1, 2, 3, 3]


def test_timm_layer_decay_uses_videomae_layer_ids(tiny_clf):
    from timm.optim import param_groups_layer_decay

    clf = build_classifier(**tiny_clf)
    groups = param_groups_layer_decay(clf, weight_decay=0.05, layer_decay=0.5)
    scale = {name: g["lr_scale"] for g in groups for name in _names(clf, g["params"])}
    # depth 2: embedding 0.5^3, block i 0.5^(2 - i), fc_norm and head 1
    expected = {n: 0.5 ** (3 - clf.layer_id(n)) for n, _ in clf.named_parameters()}
    assert scale == expected
    assert scale["patch_embed.proj.weight"] == 0.125 and scale["head.weight"] == 1.0


def _names(model, params):
    ids = {id(p) for p in params}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_other_clip_shapes(tiny_clf):
    clf = build_classifier(**{**tiny_clf, "num_frames": 8, "img_size": 48, "tubelet_size": 4})
    assert clf.grid == (2, 3, 3)
    assert clf(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)


def test_grad_checkpointing_gives_identical_grads(videos, tiny_clf):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        clf = build_classifier(**tiny_clf, drop_path_rate=0.5, head_dropout=0.5, init_scale=1.0)
        clf.set_grad_checkpointing(ckpt)
        torch.manual_seed(7)
        clf(videos).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in clf.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_bad_settings_are_named(tiny_clf):
    for override, message in [(dict(decoder_depth=2), "unknown argument\\(s\\) decoder_depth"),
                              (dict(num_classes=0), "num_classes=0"),
                              (dict(tubelet_size=3), "tubelet_size=3 does not divide num_frames=4"),
                              (dict(name="vit_b"), "'vit_b'"),
                              (dict(drop_path_rate=1.0), "drop_path_rate=1.0")]:
        with pytest.raises(ModelConfigError, match=message):
            build_classifier(**{**tiny_clf, **override})


@pytest.mark.parametrize("norm", PROBE_NORMS)
def test_linear_probe_trains_only_the_head_on_a_frozen_eval_encoder(videos, tiny_clf, norm):
    torch.manual_seed(0)
    probe = LinearProbe(build_classifier(**tiny_clf, drop_path_rate=0.5, head_dropout=0.5), norm).train()
    assert sorted(n for n, p in probe.named_parameters() if p.requires_grad) == [
        "backbone.head.bias", "backbone.head.weight"]
    # .train() reaches the probe's norm, never the encoder: no drop path, no dropout
    assert probe.training and probe.probe_norm.training
    assert not any(m.training for m in probe.backbone.modules())
    before = {n: p.detach().clone() for n, p in probe.named_parameters()}
    optimizer = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=1.0)
    probe(videos).logsumexp(-1).sum().backward()
    optimizer.step()
    assert all(p.grad is None for n, p in probe.named_parameters() if not n.startswith("backbone.head."))
    changed = {n for n, p in probe.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"backbone.head.bias", "backbone.head.weight"}
    # the features are the encoder's tokens, mean-pooled, as at test time (not the classifier's fc_norm)
    with torch.no_grad():
        feats = VisionTransformerEncoder.forward(probe.backbone, videos).mean(dim=1)
        expected = probe.backbone.head(probe.probe_norm.eval()(feats))
        torch.testing.assert_close(probe.eval()(videos), expected, rtol=0, atol=0)


def test_linear_probe_rejects_an_unknown_norm(tiny_clf):
    with pytest.raises(ValueError, match="norm='groupnorm'.*batchnorm, layernorm"):
        LinearProbe(build_classifier(**tiny_clf), "groupnorm")
