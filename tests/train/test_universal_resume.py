"""A 2-rank run (the real launcher), converted to DeepSpeed's universal format, resumes on 1 rank (in this
process: the one-rank group of tests/helpers.py's train_in_process)."""
import pytest

from motionmae_ds.config import ConfigError
from tests.helpers import ZERO2, call_main, read_log, train_in_process
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

    # without conversion a different world size is refused (a config error: exit 2 and one line through the
    # entry point, tests/runtime/test_failures.py)
    with pytest.raises(ConfigError, match="written by 2 ranks.*universal"):
        train_in_process("pretrain", cfg, out)

    # the converter's main() in this process (its subprocess form is tested in tests/tools)
    conv = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--output", ckpts, "--format", "universal"])
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    assert (ckpts / "latest").read_text().strip() == "step00000003_universal"

    _, stdout = train_in_process("pretrain", cfg, out)
    assert f"resumed from {ckpts / 'step00000003_universal'}" in stdout
    # epoch 0 was complete (12 samples), so the 1-rank run trains epoch 1: 6 steps after step 3
    assert [r["step"] for r in read_log(out)] == [1, 2, 3] + list(range(4, 10))
    # latest now names the ordinary checkpoint the 1-rank run wrote, which the next launch reads the ordinary
    # way (prepare_resume follows latest: tests/checkpoint/test_universal.py)
    assert (ckpts / "latest").read_text().strip() == "step00000009"
    assert not (ckpts / "step00000009" / "zero").exists()
