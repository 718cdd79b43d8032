"""A command given the other kind of checkpoint says so in one line naming both kinds and the command that takes
it, exit 2: evaluation (launch/evaluate.py, launch/finetune.py --eval) given a pretraining run, launch/visualize.py
given a finetuning run, and finetune.init_keep_head given a pretraining checkpoint. The kind comes from the run's
record, else from the checkpoint's own client state (a bare checkpoints directory)."""
import shutil

import pytest

from motionmae_ds.config import ConfigError
from tests.finetune_support import motion_lists, write_config
from tests.helpers import call_main, launch, train_in_process

TAKES_PRETRAINING = "takes it, as do launch/knn_eval.py and launch/visualize.py)"


@pytest.fixture
def runs(tiny_config, tmp_path):
    """A pretraining run and a finetuning run of one epoch each, and the finetuning config."""
    pre = tmp_path / "pre"
    train_in_process("pretrain", tiny_config(schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2}), pre)
    lists = motion_lists(tmp_path / "cache")
    ft_cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "test_list": lists["test"]},
                          schedule={"epochs": 1, "warmup_epochs": 0}, eval={"val_every_epochs": 0})
    ft = tmp_path / "ft"
    train_in_process("finetune", ft_cfg, ft)
    return pre, ft, ft_cfg


def evaluation_refuses(source) -> str:
    return (f"config error: --checkpoint {source} is a pretraining checkpoint; evaluation (launch/evaluate.py, "
            f"launch/finetune.py --eval) needs a finetuning one (launch/finetune.py --set finetune.init={source} "
            f"{TAKES_PRETRAINING}")


def test_evaluation_is_refused_a_pretraining_checkpoint(runs, tmp_path):
    pre, ft, ft_cfg = runs
    # a run dir, a tag dir: from the run's record, before its config is read as a finetuning one
    for source in (pre, pre / "checkpoints" / "step00000006"):
        refused = call_main("evaluate.py", ["--checkpoint", source])
        assert refused.returncode == 2 and refused.stderr.strip() == evaluation_refuses(source)
    refused = call_main("finetune.py", ["--eval", "--config", ft_cfg, "--checkpoint", pre, "--output_dir", ft])
    assert refused.returncode == 2 and refused.stderr.strip() == evaluation_refuses(pre)

    # a bare copy of its checkpoints (no record beside it), through the real entry point: the checkpoint's own
    # config names its kind when the weights are read
    bare = shutil.copytree(pre / "checkpoints", tmp_path / "bare")
    proc = launch("evaluate.py", ["--checkpoint", bare, "--config", ft_cfg, "--output_dir", tmp_path / "eval"])
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"config error: --checkpoint: {bare} is a pretraining checkpoint; evaluation (launch/evaluate.py, "
        f"launch/finetune.py --eval) needs a finetuning one (launch/finetune.py --set finetune.init={bare} "
        f"{TAKES_PRETRAINING}")
    assert "unknown key" not in proc.stderr and not (tmp_path / "eval").exists()


def test_visualize_is_refused_a_finetuning_checkpoint(runs, tmp_path, synthetic_cache):
    pre, ft, _ = runs
    video = sorted(synthetic_cache.rglob("*.mp4"))[0]
    bare = shutil.copytree(ft / "checkpoints", tmp_path / "bare")
    for source in (ft, bare):  # the run's record; the checkpoint's client state
        refused = call_main("visualize.py", ["--checkpoint", source, "--video", video, "--output_dir", tmp_path / "v"])
        assert refused.returncode == 2
        assert refused.stderr.strip() == (f"error: {source} is a finetuning checkpoint; launch/visualize.py "
                                          f"(reconstruction figures) needs a pretraining one (launch/evaluate.py "
                                          f"--checkpoint {source} takes it)")
    assert not (tmp_path / "v").exists()
    drawn = call_main("visualize.py", ["--checkpoint", pre, "--video", video, "--output_dir", tmp_path / "v",
                                       "--ratios", "0.5"])
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "v" / f"{video.stem}_mask50.png").stat().st_size > 0


def test_finetune_keeping_a_head_is_refused_a_pretraining_checkpoint(runs, tmp_path):
    pre, _, ft_cfg = runs
    with pytest.raises(ConfigError) as refused:
        train_in_process("finetune", ft_cfg, tmp_path / "keep",
                         sets=[f"finetune.init={pre}", "finetune.init_keep_head=true"])
    assert str(refused.value) == (
        f"{ft_cfg}: finetune.init: {pre} is a pretraining checkpoint, which has no classification head; "
        f"finetune.init_keep_head=true needs a finetuning one (launch/finetune.py writes them); set "
        f"finetune.init_keep_head=false to start from its encoder")
