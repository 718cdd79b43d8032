"""File-system checks at run start: synthetic data skips the list files, never the weights or the figure clip."""
import pytest

from motionmae_ds.config import ConfigError, check_paths, load_finetune_config, load_pretrain_config


def test_missing_list_file_and_root(write_yaml, tmp_path):
    cfg = load_pretrain_config(write_yaml(f"data: {{list_file: {tmp_path}/missing.csv}}\n"))
    with pytest.raises(ConfigError, match=r"data.list_file=.*missing.csv: file not found"):
        check_paths(cfg)
    (tmp_path / "list.csv").write_text("a.mp4 0\n")
    cfg = load_pretrain_config(None, ["data.synthetic=false", f"data.list_file={tmp_path}/list.csv",
                                      f"data.root={tmp_path}/videos"])
    with pytest.raises(ConfigError, match=r"data.root=.*videos: directory not found"):
        check_paths(cfg)
    (tmp_path / "videos").mkdir()
    check_paths(cfg)


def test_synthetic_skips_only_the_list_checks(tmp_path):
    cfg = load_pretrain_config(None, ["data.synthetic=true", f"data.list_file={tmp_path}/missing.csv",
                                      f"data.root={tmp_path}/nowhere"])
    check_paths(cfg)  # the embedded videos are used: the list file and root are never read


@pytest.mark.parametrize("key,message", [
    ("model.init_encoder", "not found"), ("data.vis_video", "file not found"),
])
def test_synthetic_still_checks_init_encoder_and_vis_video(tmp_path, key, message):
    cfg = load_pretrain_config(None, ["data.synthetic=true", f"{key}={tmp_path}/gone"])
    with pytest.raises(ConfigError) as exc:
        check_paths(cfg)
    msg = str(exc.value)
    assert msg == f"{cfg.source}: {key}={tmp_path}/gone: {message}"
    (tmp_path / "gone").write_text("")
    check_paths(cfg)


@pytest.mark.parametrize("synthetic", [True, False])
def test_finetune_init_checked_synthetic_or_not(tmp_path, synthetic):
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    cfg = load_finetune_config(None, [f"data.synthetic={str(synthetic).lower()}",
                                      f"data.train_list={tmp_path}/train.csv",
                                      f"finetune.init={tmp_path}/runs/pretrain_demo/checkpoints"])
    with pytest.raises(ConfigError) as exc:
        check_paths(cfg)
    msg = str(exc.value)
    assert "finetune.init=" in msg and "not found; run the pretraining demo first" in msg and "\n" not in msg
    cfg.finetune.init = "none"
    check_paths(cfg)


def test_finetune_list_files(tmp_path):
    cfg = load_finetune_config(None, ["data.synthetic=false", f"data.train_list={tmp_path}/train.csv",
                                      "finetune.init=none"])
    with pytest.raises(ConfigError, match=r"data.train_list=.*train.csv: file not found"):
        check_paths(cfg)
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    cfg.data.val_list = str(tmp_path / "val.csv")
    with pytest.raises(ConfigError, match=r"data.val_list=.*val.csv: file not found"):
        check_paths(cfg)
    cfg.data.synthetic = True
    check_paths(cfg)


def test_other_objects_are_refused():
    with pytest.raises(TypeError, match="PretrainConfig or FinetuneConfig"):
        check_paths(object())


def test_each_source_of_a_mixture_is_checked_and_named(write_yaml, tmp_path):
    (tmp_path / "a.csv").write_text("a.mp4 0\n")
    (tmp_path / "s-0.tar").write_bytes(b"")

    def check(second: str) -> None:
        check_paths(load_pretrain_config(write_yaml(
            f"data:\n  sources:\n    - {{list_file: {tmp_path}/a.csv}}\n    - {second}\n")))

    with pytest.raises(ConfigError, match=r"data.sources\[1\].list_file=.*b.csv: file not found"):
        check(f"{{list_file: {tmp_path}/b.csv}}")
    with pytest.raises(ConfigError, match=r"data.sources\[1\].shards=.*s-\{0..1\}.tar: .*s-1.tar: file not found"):
        check(f"{{shards: '{tmp_path}/s-{{0..1}}.tar'}}")
    with pytest.raises(ConfigError, match=r"data.sources\[1\].root=.*videos: directory not found"):
        check(f"{{list_file: {tmp_path}/a.csv, root: {tmp_path}/videos}}")
    check(f"{{shards: '{tmp_path}/s-{{0..0}}.tar'}}")
