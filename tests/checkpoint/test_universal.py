"""Resume at another world size: a 2-rank ZeRO-2 checkpoint -> universal (in a directory of its own, the source
left as it was) -> loaded by 1 rank under the real launcher holds exactly the 2-rank run's fp32 master weights and
Adam moments."""
import shutil

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from motionmae_ds.checkpoint import (
    MODEL_STATES,
    CheckpointError,
    is_universal,
    prepare_resume,
    rescale_micro_in_epoch,
    to_universal,
)
from motionmae_ds.tools.convert import export


def test_two_ranks_to_one_through_universal(zero2_pretrain, tiny_yaml, worker, convert_cli, tmp_path):
    tag = (zero2_pretrain / "latest").read_text().strip()
    # what the 2-rank run holds, read by 2 ranks the ordinary way
    worker(["dump", "--config", tiny_yaml, "--ckpt_dir", zero2_pretrain, "--out", tmp_path / "ref.pt"], ranks=2)
    ref = torch.load(tmp_path / "ref.pt", weights_only=False)
    assert ref["load_universal"] is False and ref["world_size"] == 2

    ckpt = shutil.copytree(zero2_pretrain, tmp_path / "run" / "checkpoints")
    # the conversion never writes into the run it reads: it may not go into it (or above it) ...
    for inside in (ckpt, tmp_path / "run", tmp_path / "run" / "checkpoints" / "sub", tmp_path):
        refused = convert_cli("--checkpoint", ckpt, "--format", "universal", "--output", inside)
        assert refused.returncode == 2 and "the universal copy goes to a directory of its own" in refused.stderr
    # ... and by default makes a run directory of its own beside it
    proc = convert_cli("--checkpoint", ckpt, "--format", "universal")
    assert proc.returncode == 0, proc.stderr
    new_tag = tag + "_universal"
    uni = tmp_path / "run_universal" / "checkpoints"
    assert f"wrote {uni / new_tag}" in proc.stdout and f"--output_dir {uni.parent}" in proc.stdout
    assert (uni / "latest").read_text() == new_tag and (uni / "latest_universal").read_text() == new_tag
    assert is_universal(uni / new_tag) and not is_universal(ckpt / tag)
    # the source is as it was: its latest names its own tag, nothing was added beside it
    assert (ckpt / "latest").read_text().strip() == tag and sorted(p.name for p in ckpt.iterdir()) == sorted(
        p.name for p in zero2_pretrain.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.pt", "run", "run_universal"]
    assert not [p for p in uni.iterdir() if p.name.startswith(".")]

    worker(["dump", "--config", tiny_yaml, "--ckpt_dir", uni, "--out", tmp_path / "one.pt"], ranks=1)
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    assert one["load_universal"] is True and one["world_size"] == 1
    assert one["client"]["tag"] == new_tag and one["client"]["world_size"] == 2
    for key in ("step", "epoch", "micro_in_epoch", "config"):
        assert one["client"][key] == ref["client"][key]
    assert one["adam_step"] == ref["adam_step"] == [3]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(zero2_pretrain), tag=tag)
    for kind in ("fp32", "exp_avg", "exp_avg_sq"):
        assert sorted(one[kind]) == sorted(ref[kind])
        for name in ref[kind]:
            assert torch.equal(one[kind][name], ref[kind][name]), (kind, name)
    assert all(torch.equal(one["fp32"][k], consolidated[k]) for k in consolidated)
    assert any(ref["exp_avg_sq"][k].abs().sum() > 0 for k in ref["exp_avg_sq"])  # moments are not trivially zero

    # the universal tag also converts to plain (from its per-parameter fp32 files), identically
    plain = torch.load(export(uni, tmp_path / "plain.pth", "plain"), weights_only=True)
    assert sorted(plain) == sorted(consolidated) and all(torch.equal(plain[k], consolidated[k]) for k in plain)

    # converting again refuses to overwrite and writes nothing
    again = convert_cli("--checkpoint", ckpt, "--tag", tag, "--format", "universal")
    assert again.returncode == 2 and f"{uni.parent}: exists" in again.stderr
    assert (uni / "latest").read_text() == new_tag and (ckpt / "latest").read_text().strip() == tag


def test_prepare_resume_follows_latest(zero2_pretrain, tmp_path):
    ckpt = shutil.copytree(zero2_pretrain, tmp_path / "checkpoints")
    tag = (ckpt / "latest").read_text().strip()
    user = {"bf16": {"enabled": True}, "checkpoint": {"load_universal": True, "tag_validation": "Warn"}}
    resolved = prepare_resume(ckpt, user)
    # an ordinary checkpoint must be read the ordinary way, whatever the JSON says
    assert resolved["checkpoint"] == {"load_universal": False, "tag_validation": "Warn"}
    assert user["checkpoint"]["load_universal"] is True  # the caller's dict is not edited
    assert prepare_resume(tmp_path / "fresh_run", {})["checkpoint"] == {"load_universal": False}
    # a universal tag dir (zero/ per-parameter folders + model states) named by latest switches it on
    (ckpt / f"{tag}_universal" / "zero").mkdir(parents=True)
    shutil.copy(ckpt / tag / MODEL_STATES, ckpt / f"{tag}_universal")
    (ckpt / "latest").write_text(f"{tag}_universal")
    assert prepare_resume(ckpt, {})["checkpoint"] == {"load_universal": True}


def test_rescale_micro_in_epoch():
    # 2 ranks x 2 clips, 3 micro-steps done = 12 samples = 6 micro-steps of 1 rank x 2 clips
    assert rescale_micro_in_epoch(3, saved_world=2, saved_micro=2, world=1, micro=2) == 6
    assert rescale_micro_in_epoch(6, saved_world=1, saved_micro=2, world=4, micro=3) == 1
    with pytest.raises(ValueError, match="12 samples"):
        rescale_micro_in_epoch(3, saved_world=2, saved_micro=2, world=1, micro=5)


def test_to_universal_refuses_what_it_cannot_convert(zero2_pretrain, tmp_path):
    ckpt = shutil.copytree(zero2_pretrain, tmp_path / "checkpoints")
    tag = (ckpt / "latest").read_text().strip()
    for shard in (ckpt / tag).glob("*optim_states.pt"):
        shard.unlink()  # a module-only checkpoint has no optimizer state to redistribute
    before = sorted(p.name for p in ckpt.iterdir())
    with pytest.raises(CheckpointError, match=f"{tag}: not a ZeRO checkpoint"):
        to_universal(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == before and (ckpt / "latest").read_text() == tag
