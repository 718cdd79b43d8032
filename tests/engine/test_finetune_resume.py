"""Finetuning resumes like pretraining: kill -9 mid-epoch and the relaunch logs the uninterrupted run's losses;
a 2-rank checkpoint, converted to DeepSpeed's universal format, resumes on 1 rank."""
import json
import os
import signal
import subprocess
import sys
import time

from test_finetune_support import REPO, ZERO2, env, free_port, launch, motion_lists, write_config


def _steps(run_dir):
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by kill -9
            continue
        if "loss" in rec:
            out.append(rec)
    return out


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
    ref = launch("finetune.py", args + ["--output_dir", ref_dir], ranks=1)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = {r["step"]: r for r in _steps(ref_dir)}
    assert sorted(reference) == list(range(1, 25))

    cmd = ["deepspeed", "--num_gpus", "1", "--master_port", str(free_port()), str(REPO / "launch" / "finetune.py"),
           *map(str, args + ["--output_dir", cut_dir])]
    with open(tmp_path / "cut.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    latest = cut_dir / "checkpoints" / "latest"
    end = time.time() + 300
    # a mid-epoch checkpoint of epoch 1 (step 16) and steps past it
    while time.time() < end and not (latest.exists() and latest.read_text().strip() >= "step00000016"
                                     and any(r["step"] >= 18 for r in _steps(cut_dir))):
        assert proc.poll() is None, (tmp_path / "cut.txt").read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(r["step"] for r in _steps(cut_dir))
    assert killed_at < 24, "the run finished before it could be killed"
    tag = latest.read_text().strip()
    resumed_step = int(tag.removeprefix("step"))
    assert resumed_step % 12, "the checkpoint resumed from must be a mid-epoch one"

    again = launch("finetune.py", args + ["--output_dir", cut_dir], ranks=1)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / tag}" in again.stdout
    resumed = {r["step"]: r for r in _steps(cut_dir)}
    assert sorted(resumed) == list(range(1, 25))
    for step in range(resumed_step + 1, 25):
        for key in ("loss", "train_top1", "grad_norm"):
            a, b = reference[step][key], resumed[step][key]
            assert abs(a - b) <= 1e-5 * max(abs(a), 1e-8), (step, key, a, b)
        assert reference[step]["lr"] == resumed[step]["lr"]
    assert _vals(cut_dir) == _vals(ref_dir) and set(_vals(ref_dir)) == {0, 1}


def test_two_rank_finetune_checkpoint_resumes_on_one_rank(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "val_list": lists["val"]},
                       schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2}, eval={"val_every_epochs": 0})
    out = tmp_path / "run"
    args = ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out]
    # 24 videos: 6 steps per epoch on 2 ranks x batch 2, 12 on 1 rank
    first = launch("finetune.py", args + ["--set", "schedule.epochs=1"], ranks=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step00000006"

    refused = launch("finetune.py", args, ranks=1)
    assert refused.returncode == 2 and "written by 2 ranks" in refused.stderr and "universal" in refused.stderr

    conv = subprocess.run([sys.executable, str(REPO / "launch" / "convert_checkpoint.py"), "--input", str(ckpts),
                           "--output", str(ckpts), "--format", "universal"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    assert (ckpts / "latest").read_text().strip() == "step00000006_universal"

    resumed = launch("finetune.py", args, ranks=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {ckpts / 'step00000006_universal'}" in resumed.stdout
    steps = _steps(out)
    assert [r["step"] for r in steps] == list(range(1, 7)) + list(range(7, 19))
    assert all(r["epoch"] == 1 for r in steps[6:])
    assert (ckpts / "latest").read_text().strip() == "step00000018"
