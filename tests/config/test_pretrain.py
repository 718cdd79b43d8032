"""The pretraining job config: defaults, value checks and choices taken from the model constants."""
import pytest

from motionmae_ds.config import (
    DEFAULT_PRETRAIN_CONFIG,
    ConfigError,
    PretrainConfig,
    config_from_dict,
    load_pretrain_config,
)
from motionmae_ds.models.masking import DECODER_HEADS, DECODER_MASK_KINDS, MASK_KINDS
from motionmae_ds.models.motionmae import DECODER_MODES, LOSSES, TARGETS


def test_default_is_the_demo_yaml():
    cfg = load_pretrain_config()
    assert isinstance(cfg, PretrainConfig)
    assert cfg.source == str(DEFAULT_PRETRAIN_CONFIG)
    assert cfg.data.synthetic and cfg.model.name == "vit_tiny"


def test_dataclass_defaults():
    cfg = PretrainConfig()
    assert (cfg.optim.base_lr, cfg.optim.min_lr, cfg.optim.betas) == (1.5e-4, 0.0, (0.9, 0.95))
    assert (cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.schedule.batch_size) == (800, 40, 32)
    assert cfg.data.scale == (0.5, 1.0) and cfg.model.drop_path_rate == 0.0 and cfg.run.keep_last == 2
    assert not hasattr(cfg, "debug") and cfg.run.save_every_steps == 0


def test_dict_round_trip(write_yaml):
    cfg = load_pretrain_config(write_yaml("data: {list_file: x.csv, scale: [0.4, 1]}\nmasking: {kind: tube}\n"))
    data = cfg.to_dict()
    assert data["data"]["scale"] == [0.4, 1.0] and "source" not in data
    again = config_from_dict(data)
    assert again.to_dict() == data and again.data.scale == (0.4, 1.0)
    data["masking"]["kind"] = "blocks"
    with pytest.raises(ConfigError, match=r"<dict>: masking.kind='blocks'"):
        config_from_dict(data)


@pytest.mark.parametrize("line,match", [
    ("masking: {ratio: 1.5}", r"masking.ratio=1.5 must be in \(0, 1\)"),
    ("masking: {kind: blocks}", r"masking.kind='blocks' is not one of random, tube, frame"),
    ("model: {num_frames: 15}", r"model.tubelet_size=2 does not divide model.num_frames=15"),
    ("model: {img_size: 100}", r"model.patch_size=16 does not divide model.img_size=100"),
    ("model: {decoder_mode: joint}", r"model.decoder_mode='joint' is not one of divide, shared"),
    ("targets: {loss_type: huber}", r"targets.loss_type='huber' is not one of mse, l1, smooth_l1"),
    ("targets: {motion_granularity: 0}", r"targets.motion_granularity=0 must be positive"),
    ("schedule: {accum_steps: 2, total_batch_size: 64}", r"accum_steps or schedule.total_batch_size, not both"),
    ("schedule: {epochs: 10, warmup_epochs: 11}", r"schedule.warmup_epochs=11 exceeds schedule.epochs=10"),
    ("run: {save_every_steps: -1}", r"run.save_every_steps=-1 must be >= 0"),
    ("data: {list_file: a.csv, max_bad_fraction: 2}", r"data.max_bad_fraction=2.0 must be in \[0, 1\]"),
    ("data: {list_file: a.csv, scale: [0.9, 0.5]}", r"data.scale=\[0.9, 0.5\] must satisfy"),
    ("masking: {decoder_ratio: 0.3}", r"masking.decoder_ratio=0.3 must be 0 \(off\) or one of 0.25, 0.5, 0.75"),
    ("masking: {decoder_ratio: 0.5}\nmodel: {img_size: 48}",
     r"masking.decoder_ratio=0.5 tiles the token grid by 2x2 cells, but .* = 3 tokens per side is odd"),
    ("masking: {decoder_ratio: 0.5, decoder_heads: complementary}\nmodel: {decoder_mode: shared}",
     r"masking.decoder_heads=complementary needs model.decoder_mode=divide"),
    ("masking: {decoder_ratio: 0.5, decoder_heads: complementary}\ntargets: {target: motion}",
     r"targets.target=motion has one"),
])
def test_bad_values(write_yaml, line, match):
    text = line + "\n" if line.startswith("data") else "data: {list_file: a.csv}\n" + line + "\n"
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(write_yaml(text))


def test_list_file_needed_unless_synthetic(write_yaml):
    with pytest.raises(ConfigError, match=r"data.list_file is empty \(set it, or data.synthetic: true\)"):
        load_pretrain_config(write_yaml("model: {name: vit_tiny}\n"))
    assert load_pretrain_config(write_yaml("data: {synthetic: true}\n")).data.list_file == ""


@pytest.mark.parametrize("key,choices", [
    ("model.decoder_mode", DECODER_MODES), ("targets.target", TARGETS),
    ("targets.loss_type", tuple(LOSSES)), ("masking.kind", MASK_KINDS),
    ("masking.decoder_kind", DECODER_MASK_KINDS), ("masking.decoder_heads", DECODER_HEADS),
])
def test_choices_are_the_model_constants(key, choices):
    """Every value the model accepts loads, and the error lists exactly the model's choices."""
    for value in choices:
        section, name = key.split(".")
        assert getattr(getattr(load_pretrain_config(None, [f"{key}={value}"]), section), name) == value
    with pytest.raises(ConfigError) as exc:
        load_pretrain_config(None, [f"{key}=bogus"])
    assert str(exc.value).endswith(f"{key}='bogus' is not one of {', '.join(choices)}")


def test_decoder_masking_is_off_by_default_and_loads_every_ratio():
    assert load_pretrain_config(None).masking.decoder_ratio == 0.0
    for ratio in (0, 0.25, 0.5, 0.75):
        cfg = load_pretrain_config(None, [f"masking.decoder_ratio={ratio}", "masking.decoder_heads=complementary"])
        assert cfg.masking.decoder_ratio == ratio
    # an odd grid is fine while decoder masking is off
    assert load_pretrain_config(None, ["model.img_size=48"]).model.img_size == 48
