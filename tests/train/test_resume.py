"""kill -9 mid-epoch, re-run the same command: the resumed losses equal an uninterrupted run's (with decoder
masking on: its draws resume too). --no_resume starts over; the same command on a complete run does nothing."""
from motionmae_ds.runtime.cli import training_parser
from tests.helpers import ZERO2, assert_same_steps, read_log, run_killed_at, train_in_process
from tests.helpers import run_pretrain as run


def test_kill9_resume_matches_uninterrupted(tiny_config, tmp_path):
    # 12 videos / batch 2 = 6 steps per epoch, 4 epochs; checkpoints every 5 steps (5, 10, 15, 20: none at an
    # epoch's end, 6/12/18, so the resume is mid-epoch) and the last
    # epoch's end; a loader worker so that worker timing would show if it leaked into the data; decoder masking
    # on, so its draws (after the encoder mask, from the same generator) must resume exactly too
    cfg = tiny_config(schedule={"epochs": 4, "warmup_epochs": 1, "batch_size": 2},
                      masking={"kind": "random", "ratio": 0.5, "decoder_ratio": 0.5, "decoder_heads": "complementary"},
                      data={"num_workers": 1}, model={"drop_path_rate": 0.1},
                      run={"save_every_steps": 5, "save_every_epochs": 0, "log_every": 1})
    args = ["--config", cfg, "--deepspeed_config", ZERO2]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"

    # the uninterrupted run in this process (one rank, one thread, like the launched one): the launched run must
    # retrace it wherever it was killed
    train_in_process("pretrain", cfg, ref_dir)
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, 25))

    # kill -9 at step 13: the last checkpoint is step 10's (mid-epoch, in epoch 1), steps 11 and 12 are logged past it
    rows = run_killed_at("pretrain", 13, args + ["--output_dir", cut_dir], 1, tmp_path / "cut1.txt")
    resumed_tag = (cut_dir / "checkpoints" / "latest").read_text().strip()
    assert resumed_tag == "step00000010" and [r["step"] for r in rows] == list(range(1, 13))
    resumed_step = 10

    again = run(args + ["--output_dir", cut_dir])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / resumed_tag}" in again.stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, 25))
    assert_same_steps(reference, resumed, resumed_step + 1, 24, ("loss", "loss_frame", "loss_motion", "grad_norm"))


def test_no_resume_starts_over(tiny_config, tmp_path):
    # in this process (tests/train/test_loop.py's one-rank group): what --no_resume selects, not the flag's parsing
    assert training_parser("pretrain", "x.yaml").parse_args(["--no_resume"]).no_resume
    cfg = tiny_config(schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out = tmp_path / "run"
    first, _ = train_in_process("pretrain", cfg, out)
    assert first["resumed_from"] is None
    # same command: the run is complete, says so and trains nothing more
    second, stdout = train_in_process("pretrain", cfg, out)
    assert second["complete"] and f"{out} is complete (step 6" in stdout and "resumed from" not in stdout
    assert len(read_log(out)) == 6
    third, stdout = train_in_process("pretrain", cfg, out, resume=False)
    assert third["resumed_from"] is None and "resumed from" not in stdout
    assert [r["step"] for r in read_log(out)] == list(range(1, 7))
