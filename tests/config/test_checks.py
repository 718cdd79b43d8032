"""Checks both job configs share: choices from the data/model constants, and the batch layout."""
import pytest

from motionmae_ds.config import ConfigError, batch_layout, load_finetune_config, load_pretrain_config
from motionmae_ds.data.decode import BACKENDS
from motionmae_ds.data.lists import FORMATS
from motionmae_ds.models.pos_embed import POS_EMBED_KINDS
from tests.helpers import REPO

LOADERS = {"pretrain": load_pretrain_config, "finetune": load_finetune_config}


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("key,choices", [
    ("data.decode_backend", BACKENDS), ("data.list_format", FORMATS), ("model.pos_embed", POS_EMBED_KINDS),
])
def test_shared_choices(kind, key, choices):
    load = LOADERS[kind]
    section, name = key.split(".")
    for value in choices:
        assert getattr(getattr(load(None, [f"{key}={value}"]), section), name) == value
    with pytest.raises(ConfigError) as exc:
        load(None, [f"{key}=nope"])
    msg = str(exc.value)
    assert msg.endswith(f"{key}='nope' is not one of {', '.join(choices)}") and "\n" not in msg


@pytest.mark.parametrize("kind", LOADERS)
def test_shared_value_checks(kind):
    load = LOADERS[kind]
    with pytest.raises(ConfigError, match=r"data.frame_template='frames.jpg' must hold one integer field"):
        load(None, ["data.frame_template=frames.jpg"])
    with pytest.raises(ConfigError, match=r"data.frame_start=-1 must be >= 0"):
        load(None, ["data.frame_start=-1"])
    with pytest.raises(ConfigError, match=r"schedule.batch_size=0 must be positive"):
        load(None, ["schedule.batch_size=0"])
    with pytest.raises(ConfigError, match=r"optim.base_lr=-1.0 must be >= 0"):
        load(None, ["optim.base_lr=-1"])
    with pytest.raises(ConfigError, match=r"schedule.total_batch_size=0 must be positive"):
        load(None, ["schedule.total_batch_size=0"])


def test_batch_layout():
    cfg = load_pretrain_config(None, ["schedule.batch_size=4", "schedule.total_batch_size=32"])
    assert batch_layout(cfg, 2) == (4, 4, 32)
    with pytest.raises(ConfigError, match="total_batch_size=32 is not a multiple of schedule.batch_size=4 x "
                                          "world size 3; a total batch of 32 cannot be split evenly over 3 ranks"):
        batch_layout(cfg, 3)
    cfg = load_pretrain_config(None, ["schedule.batch_size=4", "schedule.accum_steps=3"])
    assert batch_layout(cfg, 2) == (4, 3, 24)
    assert batch_layout(load_pretrain_config(None, ["schedule.batch_size=5"]), 1) == (5, 1, 5)


def test_batch_layout_finetune():
    cfg = load_finetune_config(None, ["schedule.batch_size=2", "schedule.total_batch_size=16"])
    assert batch_layout(cfg, 4) == (2, 2, 16)
    # the remedy: the largest micro batch up to the configured one that divides the total on this world size
    # (ViT-L K400 on 32 GPUs: 64 / 32 = 2 per rank; ViT-B: 384 / 32 = 12 per rank, of which 6 is the largest
    # divisor up to 8, with 2 accumulation steps)
    for recipe, micro, accum in (("finetune_k400_vit_large", 2, 1), ("finetune_k400_vit_base", 6, 2)):
        cfg = load_finetune_config(str(REPO / "configs" / f"{recipe}.yaml"), [])
        with pytest.raises(ConfigError, match=rf"world size 32; with 32 ranks use --set schedule.batch_size={micro} "
                                              rf"\({accum} accumulation step"):
            batch_layout(cfg, 32)
        cfg = load_finetune_config(str(REPO / "configs" / f"{recipe}.yaml"), [f"schedule.batch_size={micro}"])
        assert batch_layout(cfg, 32) == (micro, accum, cfg.schedule.total_batch_size)
    assert batch_layout(load_finetune_config(None, ["schedule.accum_steps=2"]), 3) == (8, 2, 48)


def test_batch_layout_counts_clips_with_pretraining_repeats():
    # schedule.batch_size counts videos per device; total_batch_size (and the lr scaling) count clips
    cfg = load_pretrain_config(None, ["data.num_repeats=4", "schedule.batch_size=2", "schedule.total_batch_size=64"])
    assert batch_layout(cfg, 2) == (2, 4, 64)
    assert batch_layout(load_pretrain_config(None, ["data.num_repeats=4", "schedule.batch_size=2"]), 2) == (2, 1, 16)
    with pytest.raises(ConfigError, match=r"total_batch_size=64 is not a multiple of schedule.batch_size=2 x "
                                          r"data.num_repeats=3 x world size 2; a total batch of 64 cannot be "
                                          r"split evenly over 2 ranks x 3 clips per video"):
        batch_layout(load_pretrain_config(None, ["data.num_repeats=3", "schedule.batch_size=2",
                                                 "schedule.total_batch_size=64"]), 2)
    with pytest.raises(ConfigError, match=r"data.num_repeats=0 must be positive"):
        load_pretrain_config(None, ["data.num_repeats=0"])
    # finetuning's num_repeats re-augments one clip and counts videos, as before
    ft = load_finetune_config(None, ["data.num_repeats=2", "schedule.batch_size=2", "schedule.total_batch_size=8"])
    assert batch_layout(ft, 2) == (2, 2, 8)
