"""The finetuning / probing job config: its own defaults over the shared sections, its checks."""
import pytest

from motionmae_ds.config import (
    DEFAULT_FINETUNE_CONFIG,
    ConfigError,
    FinetuneConfig,
    PretrainConfig,
    load_finetune_config,
)
from motionmae_ds.models.classifier import PROBE_NORMS


def test_default_is_the_demo_yaml():
    cfg = load_finetune_config()
    assert isinstance(cfg, FinetuneConfig)
    assert cfg.source == str(DEFAULT_FINETUNE_CONFIG) and cfg.data.synthetic


def test_overridden_defaults_do_not_leak_into_pretraining():
    ft, pre = FinetuneConfig(), PretrainConfig()
    assert (ft.optim.base_lr, ft.optim.min_lr, ft.optim.layer_decay) == (5e-4, 1e-6, 0.75)
    assert ft.optim.betas == (0.9, 0.999)
    assert (ft.schedule.epochs, ft.schedule.warmup_epochs, ft.schedule.batch_size) == (30, 5, 8)
    assert ft.data.scale == (0.08, 1.0) and ft.model.drop_path_rate == 0.1 and ft.run.keep_last == 1
    assert ft.model.num_classes == 174 and ft.finetune.init == "none"
    # the shared fields keep one default
    assert ft.data.mean == pre.data.mean and ft.model.patch_size == pre.model.patch_size == 16
    assert pre.data.scale == (0.5, 1.0) and pre.optim.base_lr == 1.5e-4


def test_short_side_and_mixup_active():
    cfg = load_finetune_config(None, ["data.short_side_size=null", "model.img_size=224",
                                      "mixup.prob=1.0", "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0"])
    assert cfg.short_side == 256 and not cfg.mixup_active
    cfg = load_finetune_config(None, ["data.short_side_size=80", "mixup.prob=0.5", "mixup.cutmix_alpha=1.0"])
    assert cfg.short_side == 80 and cfg.mixup_active
    assert not load_finetune_config(None, ["mixup.prob=0", "mixup.mixup_alpha=0.8"]).mixup_active


@pytest.mark.parametrize("override,match", [
    ("finetune.probe_norm=groupnorm", r"finetune.probe_norm='groupnorm' is not one of batchnorm, layernorm"),
    ("optim.layer_decay=0", r"optim.layer_decay=0.0 must be in \(0, 1\]"),
    ("mixup.label_smoothing=1.5", r"mixup.label_smoothing=1.5 must be in \[0, 1\]"),
    ("model.drop_path_rate=1.5", r"model.drop_path_rate=1.5 must be in \[0, 1\]"),
    ("model.num_classes=0", r"model.num_classes=0 must be positive"),
    ("eval.test_crops=0", r"eval.test_crops=0 must be positive"),
    ("data.short_side_size=32", r"data.short_side_size=32 is smaller than model.img_size=64"),
    ("data.synthetic=false", r"data.train_list is empty \(set it, or data.synthetic: true\)"),
    ("finetune.init=", r"finetune.init is empty"),
    ("model.tubelet_size=3", r"model.tubelet_size=3 does not divide model.num_frames=8"),
])
def test_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_finetune_config(None, [override])


@pytest.mark.parametrize("probe", ["linear", "attentive"])
def test_a_probe_needs_weights_unless_the_random_baseline_is_asked_for(probe):
    with pytest.raises(ConfigError, match=rf"finetune.probe={probe} needs pretrained weights \(finetune.init is "
                                         r"none; set finetune.probe_random_init=true"):
        load_finetune_config(None, [f"finetune.probe={probe}", "finetune.init=none"])
    cfg = load_finetune_config(None, [f"finetune.probe={probe}", "finetune.init=none",
                                      "finetune.probe_random_init=true"])
    assert cfg.finetune.probe == probe


def test_linear_probe_true_is_the_old_spelling_of_probe_linear(tmp_path):
    # a config as older runs wrote it into config.yaml and their checkpoints: no finetune.probe key
    old = load_finetune_config(None, ["finetune.linear_probe=true", "finetune.init=x.pth"])
    assert old.finetune.probe == "linear" and old.finetune.linear_probe
    both = load_finetune_config(None, ["finetune.linear_probe=true", "finetune.probe=linear", "finetune.init=x.pth"])
    assert both.to_dict()["finetune"] == old.to_dict()["finetune"]
    new = load_finetune_config(None, ["finetune.probe=linear", "finetune.init=x.pth"])
    assert new.finetune.linear_probe  # every reader of either key sees one answer
    for probe in ("none", "attentive"):
        assert not load_finetune_config(None, [f"finetune.probe={probe}", "finetune.init=x"]).finetune.linear_probe
    with pytest.raises(ConfigError, match=r"finetune.linear_probe=true contradicts finetune.probe=attentive "
                                          r"\(linear_probe is the old spelling of probe: linear; keep one\)$"):
        load_finetune_config(None, ["finetune.linear_probe=true", "finetune.probe=attentive", "finetune.init=x"])


@pytest.mark.parametrize("override,match", [
    ("finetune.probe=mlp", r"finetune.probe='mlp' is not one of none, linear, attentive"),
    ("finetune.probe_queries=0", r"finetune.probe_queries=0 must be positive"),
    ("finetune.probe_heads=0", r"finetune.probe_heads=0 must be positive"),
])
def test_bad_probe_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_finetune_config(None, ["finetune.probe=attentive", "finetune.init=x", override])


def test_probe_norms_are_the_classifier_constant():
    for norm in PROBE_NORMS:
        assert load_finetune_config(None, [f"finetune.probe_norm={norm}"]).finetune.probe_norm == norm
