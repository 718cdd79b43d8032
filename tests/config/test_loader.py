"""The loader: YAML -> dataclasses, --set overrides, type checks, one-line errors naming key/file/line."""
import pytest

from motionmae_ds.config import ConfigError, load_finetune_config, load_pretrain_config, parse_overrides


def test_values_overrides_and_types(write_yaml):
    path = write_yaml("""
        model: {name: vit_small, num_frames: 8}
        data: {list_file: x.csv, scale: [0.4, 1]}
        optim: {base_lr: 1e-3}
    """)
    cfg = load_pretrain_config(path, ["optim.weight_decay=0.1", "data.flip=false", "schedule.accum_steps=4"])
    assert cfg.model.name == "vit_small" and cfg.model.num_frames == 8
    assert cfg.optim.base_lr == pytest.approx(1e-3)  # "1e-3" is a YAML string; accepted for floats
    assert cfg.data.scale == (0.4, 1.0)
    assert cfg.optim.weight_decay == 0.1 and cfg.data.flip is False and cfg.schedule.accum_steps == 4
    assert cfg.model.tubelet_size == 2  # untouched default
    assert cfg.source == str(path)


def test_unknown_key_names_file_line_and_key(write_yaml):
    path = write_yaml("model:\n  name: vit_base\n  depht: 3\ndata:\n  list_file: a.csv\n")
    with pytest.raises(ConfigError) as exc:
        load_pretrain_config(path)
    msg = str(exc.value)
    assert f"{path}:3: model.depht: unknown key" in msg and "\n" not in msg


def test_unknown_section(write_yaml):
    path = write_yaml("modle:\n  name: vit_base\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:1: modle: unknown section"):
        load_pretrain_config(path)


@pytest.mark.parametrize("line,match", [
    ("model: {depth: three}", r"model.depth: expected an integer, got 'three'"),
    ("model: {depth: 2.5}", r"model.depth: expected an integer"),
    ("model: {depth: true}", r"model.depth: expected an integer"),
    ("data: {flip: 1}", r"data.flip: expected true/false"),
    ("optim: {base_lr: fast}", r"optim.base_lr: expected a number"),
    ("data: {scale: [0.5]}", r"data.scale: expected a list of 2"),
    ("model: {name: 3}", r"model.name: expected a string"),
])
def test_bad_types(write_yaml, line, match):
    section, _, body = line.partition(": {")
    text = "data: {list_file: a.csv, " + body + "\n" if section == "data" else "data: {list_file: a.csv}\n" + line
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(write_yaml(text))


def test_task_keys_stay_in_their_task(write_yaml):
    """Shared sections are subclassed per task: a key of one task is unknown to the other."""
    with pytest.raises(ConfigError, match=r"data.train_list: unknown key"):
        load_pretrain_config(None, ["data.train_list=a.csv"])
    with pytest.raises(ConfigError, match=r"model.num_classes: unknown key"):
        load_pretrain_config(None, ["model.num_classes=3"])
    with pytest.raises(ConfigError, match=r"data.list_file: unknown key"):
        load_finetune_config(None, ["data.list_file=a.csv"])
    with pytest.raises(ConfigError, match=r"run.visualize: unknown key"):
        load_finetune_config(None, ["run.visualize=false"])
    # mid-epoch checkpoints are the shared loop's, so both tasks take them
    assert load_finetune_config(None, ["run.save_every_steps=5"]).run.save_every_steps == 5
    with pytest.raises(ConfigError, match=r"exp.yaml:1: masking: unknown section"):
        load_finetune_config(write_yaml("masking: {ratio: 0.9}\n"))


def test_override_errors():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["base_lr=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["optim.base_lr.x=1"])
    with pytest.raises(ConfigError, match=r"--set: optim.nope: unknown key"):
        load_pretrain_config(None, ["optim.nope=1"])
    with pytest.raises(ConfigError, match=r"--set: schedule.epochs: expected an integer, got 'ten'"):
        load_pretrain_config(None, ["schedule.epochs=ten"])
    assert parse_overrides(["data.flip=false", "data.root=", "optim.betas=[0.9, 0.99]"]) == {
        "data": {"flip": False, "root": ""}, "optim": {"betas": [0.9, 0.99]}}


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*nope.yaml: file not found"):
        load_pretrain_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"--config .*nope.yaml: file not found"):
        load_finetune_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line(write_yaml):
    path = write_yaml("model:\n  name: [vit\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:\d+: invalid YAML"):
        load_pretrain_config(path)
    with pytest.raises(ConfigError, match=r"top.yaml: expected a mapping of sections"):
        load_finetune_config(write_yaml("- a\n- b\n", name="top.yaml"))
