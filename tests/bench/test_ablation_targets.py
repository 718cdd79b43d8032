"""bench/ablation_targets.py: the labelled subset and the configs it hands to the engines."""
from collections import Counter
from pathlib import Path

import pytest

from motionmae_ds.config import load_finetune_config, load_pretrain_config
from motionmae_ds.data.lists import read_list
from tests.bench.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
ablation = load_script("ablation_targets")


def test_labelled_subset_is_balanced_and_from_train(tmp_path):
    lists = ablation.make_data(tmp_path, num_videos=32, per_class=2)
    train = {r.path: r.label for r in read_list(lists["pretrain"])}
    labelled = read_list(lists["train"])
    assert len(labelled) == 8 and Counter(r.label for r in labelled) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert all(train[r.path] == r.label for r in labelled)
    held_out = {r.path for k in ("val", "test") for r in read_list(lists[k])}
    assert len(train) == 24 and len(held_out) == 8 and not held_out & set(train)
    with pytest.raises(SystemExit, match="labelled_per_class=7"):
        ablation.make_data(tmp_path, num_videos=32, per_class=7)


def test_every_variant_gives_valid_configs(tmp_path):
    args = ablation.parse_args(["--out", str(tmp_path)])
    lists = {k: str(tmp_path / f"{k}.txt") for k in ("pretrain", "train", "val", "test")}
    for target, g in ablation.VARIANTS.values():
        if target is not None:
            cfg = load_pretrain_config(ROOT / "configs" / "pretrain_demo.yaml",
                                       ablation.pretrain_overrides(args, lists, target, g, seed=1))
            assert (cfg.targets.target, cfg.targets.motion_granularity, cfg.run.seed) == (target, g, 1)
            assert (cfg.model.img_size, cfg.model.patch_size, cfg.masking.ratio) == (32, 8, 0.75)
            assert cfg.data.list_file == lists["pretrain"] and not cfg.data.synthetic
        ft = load_finetune_config(ROOT / "configs" / "finetune_demo.yaml",
                                  ablation.finetune_overrides(args, lists, "none", seed=1))
        assert (ft.model.img_size, ft.model.patch_size, ft.model.num_frames) == (32, 8, 8)
        assert ft.data.train_list == lists["train"] and ft.data.test_list == lists["test"]
        assert ft.schedule.epochs == 40 and ft.data.flip is False


def test_summary_table_mean_and_std():
    rows = [{"variant": "frame", "top1": t} for t in (40.0, 44.0, 42.0)] + [{"variant": "scratch", "top1": 97.0}]
    table = ablation.summarise(rows, ["frame", "motion", "scratch"])
    assert "| frame | frame, g=1 | 42.0 ± 2.0 | 3 |" in table
    assert "| scratch | none (random init) | 97.0 ± 0.0 | 1 |" in table
    assert "| motion |" not in table
