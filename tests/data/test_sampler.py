"""DistributedSampler order/padding/resume and DeepSpeed JSON batch filling."""
import json

import pytest

from motionmae_ds.config import ConfigError
from motionmae_ds.data.loader import DistributedSampler
from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config


def test_sampler_partitions_and_is_a_function_of_seed_epoch():
    a = [DistributedSampler(10, 2, r, seed=3) for r in range(2)]
    shares = [list(s) for s in a]
    assert len(shares[0]) == len(shares[1]) == 5
    assert sorted(shares[0] + shares[1]) == list(range(10))
    again = DistributedSampler(10, 2, 0, seed=3)
    assert list(again) == shares[0]
    # epoch 1: a new order, and again the two ranks' shares partition the dataset
    again.set_epoch(1)
    other = DistributedSampler(10, 2, 1, seed=3)
    other.set_epoch(1)
    assert list(again) != shares[0] and list(other) != shares[1]
    assert sorted(list(again) + list(other)) == list(range(10))
    # a function of (seed, epoch) only: a sampler that went through other epochs gives the same epoch-1 order
    a[0].set_epoch(5)
    a[0].set_epoch(1)
    assert list(a[0]) == list(again)
    assert list(DistributedSampler(10, 2, 0, seed=4)) != shares[0]


def test_sampler_padding_and_drop_last():
    padded = [list(DistributedSampler(5, 2, r, seed=0, drop_last=False)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 3
    assert set(padded[0] + padded[1]) == set(range(5))
    dropped = [list(DistributedSampler(5, 2, r, seed=0)) for r in range(2)]
    assert len(dropped[0]) == 2
    with pytest.raises(ValueError, match="empty"):
        DistributedSampler(0, 1, 0)


def test_sampler_start_resumes_mid_epoch():
    s = DistributedSampler(12, 1, 0, seed=1, shuffle=True)
    s.set_epoch(2)
    full = list(s)
    s.set_start(5)
    assert list(s) == full[5:] and len(s) == 7
    s.set_epoch(3)  # a new epoch starts from its beginning
    assert len(s) == 12
    s2 = DistributedSampler(12, 1, 0, seed=1, shuffle=False)
    assert list(s2) == list(range(12))


def test_fill_batch_and_mismatch(tmp_path):
    out = fill_batch({"bf16": {"enabled": True}}, micro=4, accum=2, world_size=3)
    assert out["train_micro_batch_size_per_gpu"] == 4 and out["gradient_accumulation_steps"] == 2
    assert out["train_batch_size"] == 24
    assert fill_batch({"train_batch_size": 24}, 4, 2, 3)["train_batch_size"] == 24
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu=16 disagrees with exp.yaml: "
                                          r"schedule.batch_size gives 4"):
        fill_batch({"train_micro_batch_size_per_gpu": 16}, 4, 2, 3, yaml_origin="exp.yaml")


def test_load_ds_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_ds_config(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "bf16": {"enabled": true},\n  oops\n}')
    with pytest.raises(ConfigError, match=r"bad.json:3: invalid JSON"):
        load_ds_config(bad)
    sched = tmp_path / "sched.json"
    sched.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError, match="remove the 'scheduler' section"):
        load_ds_config(sched)


@pytest.mark.parametrize("name", ["zero2.json", "zero2_offload.json"])
def test_shipped_ds_configs(name):
    from motionmae_ds.config import REPO_ROOT

    cfg = load_ds_config(REPO_ROOT / "ds_configs" / name)
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"]
    assert cfg["data_types"]["grad_accum_dtype"] == "fp32" and cfg["gradient_clipping"] > 0
    assert "train_batch_size" not in cfg  # the YAML owns the batch
