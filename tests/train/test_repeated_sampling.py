"""Pretraining with repeated temporal sampling (data.num_repeats = 2): the batch holds 2 clips per video, the
lr counts clips, and a resume from a mid-epoch checkpoint logs the uninterrupted run's losses. In this process
(the one-rank group of tests/helpers.py's train_in_process)."""
import json
import shutil

from tests.helpers import assert_same_steps, read_log, train_in_process


def test_repeats_count_clips_and_resume_exactly(tiny_config, tmp_path):
    # 12 videos / 2 per micro-batch = 6 steps per epoch of 4 clips each; a checkpoint at step 4 (mid-epoch 0)
    cfg = tiny_config(data={"num_repeats": 2}, schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 4, "keep_last": 10})
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    _, stdout = train_in_process("pretrain", cfg, ref_dir)
    assert "batch 2 x 2 clips x 1 x 1 = 4, peak lr 0.00156" in stdout
    info = json.loads((ref_dir / "run_info.json").read_text())
    assert (info["micro_batch"], info["total_batch"], info["peak_lr"]) == (2, 4, 0.1 * 4 / 256)
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, 13))

    # the run as it was at step 4: that checkpoint only, the log up to it
    (cut_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_dir / "checkpoints" / "step00000004", cut_dir / "checkpoints" / "step00000004")
    (cut_dir / "checkpoints" / "latest").write_text("step00000004")
    for name in ("config.yaml", "run_info.json"):
        shutil.copy(ref_dir / name, cut_dir / name)
    lines = (ref_dir / "log.jsonl").read_text().splitlines()
    (cut_dir / "log.jsonl").write_text("".join(line + "\n" for line in lines
                                               if json.loads(line).get("step", 0) <= 4))
    _, stdout = train_in_process("pretrain", cfg, cut_dir)
    assert f"resumed from {cut_dir / 'checkpoints' / 'step00000004'}" in stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, 13))
    assert_same_steps(reference, resumed, 5, 12, ("loss", "loss_frame", "loss_motion", "grad_norm"))
