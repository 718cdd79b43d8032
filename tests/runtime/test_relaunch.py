"""Relaunching a run through the real ``deepspeed`` launcher, as a user retypes a command: another training config
is refused with exit 2 before anything is built or written, resume-safe changes resume, a complete run says so and
exits 0; the console of a run whose output goes to a file (no carriage-return progress, one line per epoch, the
wall time at the end); DeepSpeed's CPU-fallback warning is gone from our processes. The decisions themselves, in
this process: tests/train/test_run_record.py."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, ZERO2, run_pretrain, train_in_process
from tests.stop_at import StopAt

FALLBACK_WARNING = "Setting accelerator to CPU"


def snapshot(run_dir) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_relaunch_refuses_resumes_and_completes(tiny_config, tmp_path):
    # 12 videos / batch 2 = 6 steps per epoch, 2 epochs; the first process stops after step 5, its checkpoint at 4
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 4, "save_every_epochs": 0, "log_every": 1})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_in_process("pretrain", cfg, out, task=StopAt, stop=5)
    assert (out / "checkpoints" / "latest").read_text() == "step00000004"
    zero2 = json.loads(ZERO2.read_text())
    (tmp_path / "clip.json").write_text(json.dumps({**zero2, "gradient_clipping": 0.5}))
    (tmp_path / "print.json").write_text(json.dumps({**zero2, "steps_per_print": 7}))
    before = snapshot(out)

    # training keys changed (two in the YAML, one in the JSON; run.log_every may change): exit 2, one line per key
    # and the ways out, before the process group and the model; not a byte of the run changed
    refused = run_pretrain(["--config", cfg, "--deepspeed_config", tmp_path / "clip.json", "--output_dir", out,
                            "--set", "optim.base_lr=0.05", "schedule.warmup_epochs=0", "run.log_every=3"])
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    error = refused.stderr[refused.stderr.index("config error: "):].splitlines()
    assert error == [f"config error: {out} holds a run started with another config; resuming it (checkpoint "
                     f"step00000004) would train on with settings it did not start with (recorded -> requested):",
                     "  optim.base_lr: 0.1 -> 0.05", "  schedule.warmup_epochs: 1 -> 0",
                     "  deepspeed.gradient_clipping: 1.0 -> 0.5",
                     f"give the new run its own directory (--output_dir NEW_DIR), or start {out} over (--no_resume)"]
    assert "device:" not in refused.stdout and "shm_comm_op" not in refused.stdout  # no engine, no process group
    assert snapshot(out) == before

    # resume-safe keys only (log cadence, loader workers, how often DeepSpeed prints): resumed to the end; the
    # output goes to a pipe, as under SLURM or nohup
    args = ["--config", cfg, "--deepspeed_config", tmp_path / "print.json", "--output_dir", out,
            "--set", "run.log_every=2", "data.num_workers=1"]
    resumed = run_pretrain(args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step00000004'}: epoch 0, step 4" in resumed.stdout
    for name in ("config.yaml", "run_info.json"):
        assert snapshot(out)[name] == before[name]  # written once, when the run started
    events = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume", "complete"]
    assert events[1]["changed"] == {"data.num_workers": [0, 1], "run.log_every": [1, 2],
                                    "deepspeed.steps_per_print": [1000000, 7]}

    # the console of a run writing to a file: no carriage returns, one line per epoch (both epochs ran here, the
    # first from step 4), the wall time last among the run's lines, and a size that grows with epochs, not steps
    log = resumed.stdout + resumed.stderr
    assert "\r" not in log
    lines = resumed.stdout.splitlines()
    epoch_lines = [line for line in lines if re.match(r"^epoch \d+/2 step ", line)]
    assert [line.split(" loss ")[0] for line in epoch_lines] == ["epoch 1/2 step 6/12", "epoch 2/2 step 12/12"]
    for line in epoch_lines:
        assert re.search(r" loss [\d.]+ loss_frame [\d.]+ loss_motion [\d.]+ lr [\d.e-]+ clips/s [\d.]+ "
                         r"data_wait \d+% elapsed \d:\d\d:\d\d remaining \d:\d\d:\d\d$", line), line
    finished = [i for i, line in enumerate(lines) if line.startswith("finished: ")]
    assert len(finished) == 1 and finished[0] > lines.index(epoch_lines[-1])
    assert re.match(r"^finished: 12 steps \(8 in this process\), wall time \d:\d\d:\d\d \([\d.]+ s\)$",
                    lines[finished[0]])
    assert len(log) < 6000, log
    after = snapshot(out)

    # the same command again: complete, exit 0, nothing touched
    again = run_pretrain(args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{out} is complete (step 12, checkpoint {out / 'checkpoints' / 'step00000012'}); nothing to do" \
        in again.stdout
    assert "device:" not in again.stdout and snapshot(out) == after


def test_help_has_no_accelerator_warning():
    # a plain process as a user starts it, DeepSpeed left to detect the device itself (no GPU here: it falls back
    # to the CPU and, unfiltered, says so at import)
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    code = "import motionmae_ds.runtime.distributed, deepspeed.accelerator as a; print(a.get_accelerator()._name)"
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    # on a machine with an accelerator DeepSpeed has no fallback to warn about: the output holds no warning either way
    assert FALLBACK_WARNING not in probe.stdout + probe.stderr
    helped = subprocess.run([sys.executable, "launch/pretrain.py", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pretrain.py")
    assert FALLBACK_WARNING not in helped.stdout + helped.stderr
