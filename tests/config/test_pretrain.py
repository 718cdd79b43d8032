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


def test_sources_load_round_trip_and_fill_their_defaults(write_yaml):
    from motionmae_ds.config.pretrain import pretrain_sources

    cfg = load_pretrain_config(write_yaml(
        "data:\n  sampling_rate: 3\n  root: /base\n  sources:\n"
        "    - {name: k400, list_file: a.csv, root: /r, weight: 3}\n"
        "    - {shards: 's-{0..1}.tar', weight: 0.5, sampling_rate: 2}\n"))
    assert [(s.name, s.list_file, s.shards, s.root, s.weight, s.sampling_rate) for s in pretrain_sources(cfg)] == [
        ("k400", "a.csv", "", "/r", 3.0, 3), ("source1", "", "s-{0..1}.tar", "/base", 0.5, 2)]
    data = cfg.to_dict()
    assert data["data"]["sources"][1] == {"name": "", "list_file": "", "shards": "s-{0..1}.tar", "root": "",
                                          "weight": 0.5, "sampling_rate": 2}
    assert config_from_dict(data).to_dict() == data  # a run's config.yaml rebuilds the same sources
    # the shorthand is one source with data.root and data.sampling_rate
    one = load_pretrain_config(write_yaml("data: {list_file: x.csv, root: /v, sampling_rate: 2}\n"))
    assert [(s.list_file, s.root, s.weight, s.sampling_rate) for s in pretrain_sources(one)] == [
        ("x.csv", "/v", 1.0, 2)]


@pytest.mark.parametrize("sources,match", [
    ("[{list_file: a.csv, shards: 'b-{0..1}.tar'}]", r"data.sources\[0\]: give list_file or shards \(exactly one\)"),
    ("[{list_file: a.csv}, {root: /r}]", r"data.sources\[1\]: give list_file or shards"),
    ("[{list_file: a.csv}, {list_file: b.csv, weight: 0}]", r"data.sources\[1\].weight=0.0 must be a number > 0"),
    ("[{list_file: a.csv, weight: -2}]", r"data.sources\[0\].weight=-2.0 must be a number > 0"),
    ("[{list_file: a.csv, weight: .nan}]", r"data.sources\[0\].weight=nan must be a number > 0"),
    ("[{list_file: a.csv, sampling_rate: 0}]", r"data.sources\[0\].sampling_rate=0 must be >= 1"),
    ("[{list_file: a.csv, name: k}, {list_file: b.csv, name: k}]", r"data.sources\[1\].name='k': another entry"),
    ("[{list_file: a.csv, wieght: 2}]", r"exp.yaml:2: data.sources\[0\].wieght: unknown key \(known: name, list_file"),
    ("[{list_file: a.csv, weight: heavy}]", r"data.sources\[0\].weight: expected a number, got 'heavy'"),
    ("[a.csv]", r"data.sources\[0\]: expected a mapping of keys, got 'a.csv'"),
    ("a.csv", r"data.sources: expected a list of entries, got 'a.csv'"),
])
def test_bad_sources_are_one_line_naming_entry_and_key(write_yaml, sources, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_pretrain_config(write_yaml(f"data:\n  sources: {sources}\n"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("shorthand", ["list_file: x.csv", "shards: 'x-{0..1}.tar'", "synthetic: true"])
def test_sources_and_a_shorthand_are_not_both_given(write_yaml, shorthand):
    key = shorthand.split(":")[0]
    with pytest.raises(ConfigError, match=rf"data.{key}=.* and data.sources are both set"):
        load_pretrain_config(write_yaml(f"data:\n  {shorthand}\n  sources: [{{list_file: a.csv}}]\n"))
