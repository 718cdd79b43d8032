"""A 2-rank run, converted to DeepSpeed's universal format, resumes through launch/pretrain.py on 1 rank."""
from tests.helpers import ZERO2, call_main, read_log
from tests.helpers import run_pretrain as run


def test_two_rank_checkpoint_resumes_on_one_rank(tiny_config, tmp_path):
    # 12 videos: 3 steps per epoch on 2 ranks x batch 2, 6 on 1 rank
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2})
    out = tmp_path / "run"
    first = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out,
                 "--set", "schedule.epochs=1"], ranks=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step00000003"

    # without conversion a different world size is refused with one line
    refused = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=1)
    assert refused.returncode == 2
    assert "written by 2 ranks" in refused.stderr and "universal" in refused.stderr

    # the converter's main() in this process (its subprocess form is tested in tests/tools)
    conv = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--output", ckpts, "--format", "universal"])
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    assert (ckpts / "latest").read_text().strip() == "step00000003_universal"

    resumed = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {ckpts / 'step00000003_universal'}" in resumed.stdout
    # epoch 0 was complete (12 samples), so the 1-rank run trains epoch 1: 6 steps after step 3
    assert [r["step"] for r in read_log(out)] == [1, 2, 3] + list(range(4, 10))
    # latest now names the ordinary checkpoint the 1-rank run wrote, which the next launch reads the ordinary
    # way (prepare_resume follows latest: tests/checkpoint/test_universal.py)
    assert (ckpts / "latest").read_text().strip() == "step00000009"
    assert not (ckpts / "step00000009" / "zero").exists()
