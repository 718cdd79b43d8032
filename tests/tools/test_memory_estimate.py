"""Memory estimate parts against hand-computed numbers, and the linear-in-frames scaling it relies on."""
import dataclasses
import json

import pytest
import torch

from motionmae_ds.builders import build_model
from motionmae_ds.config import config_from_dict, load_pretrain_config
from motionmae_ds.tools import memory_estimate as me
from tests.helpers import REPO


def _tiny(masking=None, **model):
    base = {"model": {"name": "vit_tiny", "num_frames": 4, "img_size": 32, "patch_size": 16, "tubelet_size": 2,
                      "embed_dim": 48, "depth": 1, "num_heads": 3, "decoder_embed_dim": 24, "decoder_depth": 1,
                      "decoder_num_heads": 3, **model},
            "masking": {"kind": "random", "ratio": 0.5, **(masking or {})}, "data": {"synthetic": True},
            "schedule": {"epochs": 1, "warmup_epochs": 0, "batch_size": 2}}
    return config_from_dict(base)


def test_live_bytes_counts_storages_once_and_frees_them():
    with me.LiveBytes() as meter:
        a = torch.ones(1000)           # 4000 bytes
        b = a * 2                      # 8000 live
        view = b[:10]                  # same storage: nothing new
        del a                          # 4000
        c = torch.ones(500)            # 6000
    assert (meter.live, meter.peak) == (6000, 8000)
    assert view.sum() == 20 and c.numel() == 500


def test_activation_bytes_are_linear_in_frames_and_batch():
    # Fitted at 4 and 6 frames: at 2 frames this 2x2-patch model has a single temporal slice of 4 tokens,
    # and the step's peak sits in a different phase than at 4+ frames (per-sample bytes 101k there against
    # 250k / 375k / 500k / 750k at 4 / 6 / 8 / 12 frames), so it is not on the line.
    cfg = _tiny(grad_checkpointing=True)
    at_8_frames = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_frames=8))
    fit = me.fit_activation_bytes(at_8_frames, frames=(4, 6))
    assert fit.target_frames == 8 and fit.slope > 0
    for frames in (8, 12):
        measured = (me.peak_step_bytes(cfg, frames, 3) - me.peak_step_bytes(cfg, frames, 1)) / 2
        assert fit.intercept + fit.slope * frames == pytest.approx(measured, rel=0.05)


def test_model_states_buckets_and_micro_batch_by_hand():
    # DeepSpeed ZeRO-2, no offload: 2 bytes/param bf16 weights + 18 bytes/param partitioned over 32 GPUs
    assert me.model_states(1_000_000, 8, 4, {"zero_optimization": {"stage": 2}})["gpu"] == 2_000_000 + 562_500
    ds = json.loads((REPO / "ds_configs" / "zero2_vitl_32gpu.json").read_text())
    assert me.bucket_bytes(ds) == int(4e8 * 2 * 4.5)
    ds["zero_optimization"]["overlap_comm"] = False
    assert me.bucket_bytes(ds) == int(4e8 * 2)
    cfg = load_pretrain_config(REPO / "configs" / "pretrain_ssv2_vit_large_32f.yaml")
    assert me.micro_candidates(cfg, 32) == [1, 2, 4, 8, 16]  # total 512 clips: 16 per GPU
    # with 4 clips per video a micro-batch of m videos holds 4m clips: m must divide 16 / 4
    repeated = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_repeats=4))
    assert me.micro_candidates(repeated, 32) == [1, 2, 4]
    assert me.micro_candidates(dataclasses.replace(repeated, data=dataclasses.replace(cfg.data, num_repeats=3)),
                               32) == [1]  # 16 clips per GPU cannot be cut into groups of 3
    gib = me.GiB
    assert me.largest_fitting_micro(2 * gib, 10 * gib, 74 * gib, [1, 2, 4, 8, 16, 32]) == 32
    assert me.largest_fitting_micro(5 * gib, 10 * gib, 74 * gib, [1, 2, 4, 8, 16]) == 8
    with pytest.raises(ValueError, match="not even micro batch 1 fits"):
        me.largest_fitting_micro(70 * gib, 10 * gib, 74 * gib, [1, 2])


def test_step_flops_by_hand():
    # 8 tokens (2x2x2), random 50%: 4 visible, 4 masked per sample
    embed = 8 * (3 * 2 * 16 * 16) * 48
    encoder = 4 * (4 * 48 ** 2 + 2 * 48 * 192) + 2 * 4 * 4 * 48
    decoder = 4 * 48 * 24 + 8 * (4 * 24 ** 2 + 2 * 24 * 96) + 2 * 8 * 8 * 24
    heads = 2 * 4 * 24 * 1536
    macs = embed + encoder + 2 * decoder + heads
    assert macs == 1_122_816
    flops = me.step_flops(_tiny(grad_checkpointing=True), world_size=2)
    assert flops["forward_macs_per_sample"] == macs
    assert flops["train_flops_per_step"] == 6 * macs * 4  # batch 2 x 2 ranks
    assert flops["executed_flops_per_step"] == pytest.approx(8 * macs * 4)  # one more forward to recompute
    assert me.count_params(_tiny()) == sum(p.numel() for p in build_model(_tiny()).parameters())


def test_decoder_masking_lowers_the_measured_activations_and_the_step_flops():
    full, dual = _tiny(), _tiny(masking={"decoder_ratio": 0.75})
    assert me.peak_step_bytes(dual, 8, 2) < me.peak_step_bytes(full, 8, 2)
    assert me.step_flops(dual, 1)["forward_macs_per_sample"] < me.step_flops(full, 1)["forward_macs_per_sample"]
