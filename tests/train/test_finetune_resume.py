"""Finetuning resumes like pretraining: kill -9 mid-epoch and the relaunch logs the uninterrupted run's losses;
a 2-rank checkpoint, converted to DeepSpeed's universal format, resumes on 1 rank (in this process)."""
import json

from tests.finetune_support import motion_lists, write_config
from tests.helpers import ZERO2, assert_same_steps, call_main, launch, read_log, run_killed_at, train_in_process


def _vals(run_dir):
    return {r["epoch"]: r["val_top1"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
            if "val_top1" in r}


def test_finetune_kill9_mid_epoch_resumes_exactly(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    # 24 training videos / batch 2 = 12 steps per epoch on 1 rank; mixup, RandAug, drop path, EMA and a loader
    # worker, so any draw that depended on the interruption would show in the losses
    cfg = write_config(tmp_path / "ft.yaml",
                       data={"train_list": lists["train"], "val_list": lists["val"], "num_workers": 1},
                       finetune={"model_ema": True, "model_ema_decay": 0.9},
                       schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                       run={"save_every_steps": 4, "save_every_epochs": 1, "keep_last": 2})
    args = ["--config", cfg, "--deepspeed_config", ZERO2]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    # the uninterrupted run in this process (one rank, one thread, like the launched one)
    train_in_process("finetune", cfg, ref_dir)
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, 25))

    # kill -9 at step 19: the last checkpoint is step 16's (mid-epoch, in epoch 1: 12 steps per epoch), steps 17
    # and 18 are logged past it
    rows = run_killed_at("finetune", 19, args + ["--output_dir", cut_dir], 1, tmp_path / "cut.txt")
    tag = (cut_dir / "checkpoints" / "latest").read_text().strip()
    assert tag == "step00000016" and sorted({r["step"] for r in rows}) == list(range(1, 19)), tag
    resumed_step = 16

    again = launch("finetune.py", args + ["--output_dir", cut_dir], ranks=1)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / tag}" in again.stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, 25))
    assert_same_steps(reference, resumed, resumed_step + 1, 24, ("loss", "train_top1", "grad_norm"))
    assert _vals(cut_dir) == _vals(ref_dir) and set(_vals(ref_dir)) == {0, 1}


def test_two_rank_finetune_checkpoint_resumes_on_one_rank(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "val_list": lists["val"]},
                       schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2}, eval={"val_every_epochs": 0},
                       run={"keep_last": 0})
    out = tmp_path / "run"
    args = ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out]
    # 24 videos: 6 steps per epoch on 2 ranks x batch 2, 12 on 1 rank
    first = launch("finetune.py", args, ranks=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step00000012"

    # the converter's main() in this process (its subprocess form is tested in tests/tools), on epoch 0's
    # checkpoint, into a run directory of its own
    one_rank = tmp_path / "one_rank"
    conv = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--tag", "step00000006", "--output", one_rank,
                                               "--format", "universal"])
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    assert (ckpts / "latest").read_text().strip() == "step00000012"
    uni = one_rank / "checkpoints"
    assert (uni / "latest").read_text().strip() == "step00000006_universal"

    _, stdout = train_in_process("finetune", cfg, one_rank)
    assert f"resumed from {uni / 'step00000006_universal'}" in stdout
    steps = read_log(one_rank)
    assert [r["step"] for r in steps] == list(range(1, 7)) + list(range(7, 19))
    assert all(r["epoch"] == 1 for r in steps[6:])
    assert (uni / "latest").read_text().strip() == "step00000018"
