"""Schedule values and AdamW param groups against hand-computed numbers."""
import math

import pytest
import torch
from torch import nn

from motionmae_ds.builders import build_adamw
from motionmae_ds.models import build_classifier, build_pretrain_model
from motionmae_ds.train.optim import param_groups, set_lr_wd, timm_layer_decay_groups
from motionmae_ds.train.schedule import Schedule, cosine_with_warmup, scaled_lr

TINY = dict(name="vit_tiny", num_frames=4, img_size=32, depth=2, decoder_depth=1)
TINY_CLF = dict(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=2)


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 1024) == pytest.approx(6e-4)
    assert scaled_lr(1.5e-4, 128) == pytest.approx(7.5e-5)


def test_cosine_with_warmup_by_hand():
    # 10 steps, 4 warmup, peak 1, final 0.1
    vals = [cosine_with_warmup(s, 10, 4, 1.0, 0.1) for s in range(11)]
    assert vals[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert vals[4] == pytest.approx(1.0)
    # step 7 is half-way through the 6 cosine steps: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2))
    assert vals[7] == pytest.approx(0.55)
    assert vals[5] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 6)))
    assert vals[10] == pytest.approx(0.1)
    assert cosine_with_warmup(50, 10, 4, 1.0, 0.1) == pytest.approx(0.1)  # clamped after the end
    with pytest.raises(ValueError, match="total_steps"):
        cosine_with_warmup(0, 0, 0, 1.0, 0.0)


def test_schedule_epochs_to_steps_and_wd():
    s = Schedule(peak_lr=2.0, min_lr=0.0, weight_decay=0.05, weight_decay_end=None, steps_per_epoch=5,
                 epochs=4, warmup_epochs=1)
    assert s.total_steps == 20 and s.warmup_steps == 5
    assert s.lr(0) == pytest.approx(0.4) and s.lr(4) == pytest.approx(2.0)
    assert s.lr(5 + 7.5) == pytest.approx(1.0)
    assert s.wd(0) == s.wd(19) == 0.05
    s = Schedule(2.0, 0.0, 0.04, 0.4, steps_per_epoch=5, epochs=4, warmup_epochs=1)
    assert s.wd(0) == pytest.approx(0.04) and s.wd(10) == pytest.approx(0.22) and s.wd(20) == pytest.approx(0.4)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.q_bias = nn.Parameter(torch.zeros(8))
        self.frozen = nn.Parameter(torch.zeros(8, 8), requires_grad=False)


def test_param_groups_split_decay():
    groups = param_groups(Toy(), weight_decay=0.05)
    by_decay = {g["wd_scale"]: g for g in groups}
    assert sorted(by_decay[1.0]["param_names"]) == ["fc.weight"]
    assert sorted(by_decay[0.0]["param_names"]) == ["fc.bias", "mask_token", "norm.bias", "norm.weight",
                                                    "pos_embed", "q_bias"]
    assert by_decay[1.0]["weight_decay"] == 0.05 and by_decay[0.0]["weight_decay"] == 0.0
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_layer_decay_groups_and_set_lr_wd():
    clf = build_classifier(**TINY_CLF)  # depth 2: embedding layer 0, blocks 1 and 2, fc_norm and head 3
    groups = timm_layer_decay_groups(clf, 0.05, layer_decay=0.5)
    opt = build_adamw(groups, lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    set_lr_wd(opt, lr=0.1, weight_decay=0.2)
    got = {n: (g["lr"], g["weight_decay"]) for g, named in zip(opt.param_groups, groups)
           for n in named["param_names"]}
    assert got["patch_embed.proj.weight"] == (pytest.approx(0.1 * 0.125), pytest.approx(0.2))
    assert got["patch_embed.proj.bias"] == (pytest.approx(0.1 * 0.125), 0.0)
    assert got["blocks.0.attn.q_bias"] == (pytest.approx(0.1 * 0.25), 0.0)
    assert got["blocks.1.mlp.fc1.weight"] == (pytest.approx(0.1 * 0.5), pytest.approx(0.2))
    assert got["head.weight"] == (pytest.approx(0.1), pytest.approx(0.2))
    assert got["fc_norm.weight"] == (pytest.approx(0.1), 0.0)
    assert opt.defaults["betas"] == (0.9, 0.95)


def _groups_as_before(model, weight_decay, layer_id=None, num_layers=0, layer_decay=1.0):
    """engine/optim.param_groups as it was before timm formed the groups: the reference they must equal."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = ("pos_embed", "mask_token", "cls_token", "q_bias", "v_bias")
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or any(t in name for t in names) or name in skip)
        layer = layer_id(name) if layer_id is not None else num_layers
        scale = layer_decay ** (num_layers - layer) if layer_id is not None else 1.0
        g = groups.setdefault((layer, decay), {"names": [], "lr_scale": scale,
                                               "weight_decay": weight_decay if decay else 0.0,
                                               "wd_scale": 1.0 if decay else 0.0})
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def _as_set(groups, key="param_names"):
    return {(tuple(sorted(g[key])), g["lr_scale"], g["weight_decay"], g["wd_scale"]) for g in groups}


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_timm_groups_equal_the_previous_ones(weight_decay):
    pre = build_pretrain_model(**TINY)
    clf = build_classifier(**TINY_CLF)
    assert _as_set(param_groups(pre, weight_decay)) == _as_set(_groups_as_before(pre, weight_decay), "names")
    assert _as_set(param_groups(clf, weight_decay)) == _as_set(_groups_as_before(clf, weight_decay), "names")
    assert _as_set(param_groups(Toy(), weight_decay)) == _as_set(_groups_as_before(Toy(), weight_decay), "names")
    # layer decay on the classifier: timm's layers from group_matcher against the classifier's layer_id
    timm_groups = timm_layer_decay_groups(clf, weight_decay, layer_decay=0.75)
    before = _groups_as_before(clf, weight_decay, clf.layer_id, clf.get_num_layers() + 1, 0.75)
    assert _as_set(timm_groups) == _as_set(before, "names")
    # the decay split survives a zero weight decay (the schedule may ramp it up from there)
    assert {g["wd_scale"] for g in timm_groups} == {0.0, 1.0}
    for model, groups in ((pre, param_groups(pre, weight_decay)), (clf, timm_groups)):
        named = dict(model.named_parameters())
        assert all(p is named[n] for g in groups for p, n in zip(g["params"], g["param_names"], strict=True))


def test_model_no_weight_decay_list_and_real_model():
    class Named(Toy):
        def no_weight_decay(self):
            return {"fc.weight"}

    groups = param_groups(Named(), 0.05)
    assert all(g["wd_scale"] == 0.0 for g in groups)
    from motionmae_ds.builders import build_model
    from motionmae_ds.config import load_pretrain_config

    model = build_model(load_pretrain_config())
    decay = {n for g in param_groups(model, 0.05) if g["wd_scale"] for n in g["param_names"]}
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "encoder.patch_embed.proj.weight" in decay
    assert not any(n.endswith((".bias", "mask_token", "q_bias", "v_bias")) or "norm" in n for n in decay)
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decay)
