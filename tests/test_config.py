"""Experiment config: YAML -> dataclasses, --set overrides, one-line errors naming key/file/line."""
import textwrap

import pytest

from motionmae_ds.config import (DEFAULT_CONFIG, ConfigError, batch_layout, check_paths, config_from_dict,
                                 load_config, parse_overrides)


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_default_is_the_demo_yaml():
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG)
    assert cfg.data.synthetic and cfg.model.name == "vit_tiny"


def test_values_overrides_and_types(tmp_path):
    path = write(tmp_path, """
        model: {name: vit_small, num_frames: 8}
        data: {list_file: x.csv, scale: [0.4, 1]}
        optim: {base_lr: 1e-3}
    """)
    cfg = load_config(path, ["optim.weight_decay=0.1", "data.flip=false", "schedule.accum_steps=4"])
    assert cfg.model.name == "vit_small" and cfg.model.num_frames == 8
    assert cfg.optim.base_lr == pytest.approx(1e-3)  # "1e-3" is a YAML string; accepted for floats
    assert cfg.data.scale == (0.4, 1.0)
    assert cfg.optim.weight_decay == 0.1 and cfg.data.flip is False and cfg.schedule.accum_steps == 4
    assert cfg.model.tubelet_size == 2  # untouched default
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "model:\n  name: vit_base\n  depht: 3\ndata:\n  list_file: a.csv\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"{path}:3: model.depht: unknown key" in msg and "\n" not in msg


def test_unknown_section(tmp_path):
    path = write(tmp_path, "modle:\n  name: vit_base\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:1: modle: unknown section"):
        load_config(path)


@pytest.mark.parametrize("line,match", [
    ("model: {depth: three}", r"model.depth: expected an integer, got 'three'"),
    ("model: {depth: 2.5}", r"model.depth: expected an integer"),
    ("data: {flip: 1}", r"data.flip: expected true/false"),
    ("optim: {base_lr: fast}", r"optim.base_lr: expected a number"),
    ("data: {scale: [0.5]}", r"data.scale: expected a list of 2"),
    ("masking: {ratio: 1.5}", r"masking.ratio=1.5 must be in \(0, 1\)"),
    ("masking: {kind: blocks}", r"masking.kind='blocks' is not one of random, tube, frame"),
    ("model: {num_frames: 15}", r"model.tubelet_size=2 does not divide model.num_frames=15"),
    ("schedule: {accum_steps: 2, total_batch_size: 64}", r"accum_steps or schedule.total_batch_size, not both"),
])
def test_bad_values(tmp_path, line, match):
    path = write(tmp_path, "data: {list_file: a.csv}\n" + line + "\n") if not line.startswith("data") else \
        write(tmp_path, line.replace("data: {", "data: {list_file: a.csv, ") + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_override_errors():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["base_lr=1"])
    with pytest.raises(ConfigError, match=r"--set: optim.nope: unknown key"):
        load_config(None, ["optim.nope=1"])
    with pytest.raises(ConfigError, match=r"--set: schedule.epochs: expected an integer, got 'ten'"):
        load_config(None, ["schedule.epochs=ten"])


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    cfg = load_config(write(tmp_path, f"data: {{list_file: {tmp_path}/missing.csv}}\n"))
    with pytest.raises(ConfigError, match=r"data.list_file=.*missing.csv: file not found"):
        check_paths(cfg)


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "model:\n  name: [vit\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:\d+: invalid YAML"):
        load_config(path)


def test_batch_layout(tmp_path):
    cfg = load_config(None, ["schedule.batch_size=4", "schedule.total_batch_size=32"])
    assert batch_layout(cfg, 2) == (4, 4, 32)
    with pytest.raises(ConfigError, match="total_batch_size=32 is not a multiple of schedule.batch_size=4 x world size 3"):
        batch_layout(cfg, 3)
    cfg = load_config(None, ["schedule.batch_size=4", "schedule.accum_steps=3"])
    assert batch_layout(cfg, 2) == (4, 3, 24)
    assert batch_layout(load_config(None, ["schedule.batch_size=5"]), 1) == (5, 1, 5)
