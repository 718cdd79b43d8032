"""Non-finite loss stop, bad configs and bad batch settings: clear one-line errors, no damage."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motionmae_ds.config import ConfigError
from tests.helpers import REPO, ZERO2, call_main, launch_cmd, read_log, run_env, train_in_process

NAN_PRETRAIN = Path(__file__).resolve().parent / "nonfinite_pretrain.py"


def _run_with_nan(args: list, at: int) -> subprocess.CompletedProcess:
    """launch/pretrain.py under the deepspeed launcher, the loss of micro-step ``at`` made NaN (test-only hook)."""
    return subprocess.run(launch_cmd(NAN_PRETRAIN, args, ranks=1), cwd=REPO, env=run_env(MOTIONMAE_TEST_NAN_AT=str(at)),
                          capture_output=True, text=True, timeout=300)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tiny_config, tmp_path):
    # checkpoints at steps 2 and 4; the loss of micro-step 4 (0-based, i.e. optimizer step 5) becomes NaN
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 2, "keep_last": 5})
    out = tmp_path / "nan"
    res = _run_with_nan(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], at=4)
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if "non-finite loss" in line]
    assert len(lines) == 1 and "at epoch 0 step 5" in lines[0] and "step00000004" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    ckpt = out / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step00000004"
    assert not list(ckpt.glob(".tmp-*"))
    # the last good checkpoint is complete and loadable into a fresh model
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from motionmae_ds.builders import build_model
    from motionmae_ds.config import config_from_dict

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    blob = torch.load(ckpt / "step00000004" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert blob["step"] == 4 and blob["micro_in_epoch"] == 4
    model = build_model(config_from_dict(blob["config"]))
    model.load_state_dict(state)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # and a run without the poison resumes from it to the end (in this process; the resume position itself is
    # tests/train/test_loop.py's)
    summary, _ = train_in_process("pretrain", cfg, out)
    assert summary["resumed_from"] == "step00000004"
    assert [r["step"] for r in read_log(out)] == list(range(1, 13))


def _one_error_line(res):
    lines = [line for line in res.stderr.splitlines() if line.startswith("config error:")]
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def _python(args):
    return subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *map(str, args)], cwd=REPO,
                          env=run_env(), capture_output=True, text=True, timeout=120)


def test_bad_configs_exit_2_with_one_line(tiny_config, tmp_path):
    # the real process once; then main() in this process (the same code, no interpreter start-up per case:
    # every one of these fails before a process group or engine exists)
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("model:\n  name: vit_tiny\n  depht: 2\ndata:\n  synthetic: true\n")
    assert f"{bad_key}:3: model.depht: unknown key" in _one_error_line(_python(["--config", bad_key]))

    def main(args):
        return call_main("pretrain.py", args)

    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text("data:\n  synthetic: true\nschedule:\n  epochs: many\n")
    assert "schedule.epochs: expected an integer, got 'many'" in _one_error_line(main(["--config", bad_type]))

    missing = tmp_path / "missing.yaml"
    missing.write_text(f"data:\n  list_file: {tmp_path}/no_such_list.csv\n")
    assert "data.list_file=" in _one_error_line(main(["--config", missing]))

    assert "--config" in _one_error_line(main(["--config", tmp_path / "nope.yaml"]))
    assert "optim.lr: unknown key" in _one_error_line(main(["--set", "optim.lr=1"]))
    assert "masking.decoder_ratio=0.4" in _one_error_line(main(["--set", "masking.decoder_ratio=0.4"]))


def test_batch_mismatch_in_json_is_an_error(tiny_config, tmp_path):
    ds = json.loads(ZERO2.read_text())
    ds["train_micro_batch_size_per_gpu"] = 16
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    cfg = tiny_config()
    # raised once the process group exists (in this process: the one-rank group of train_in_process); a config
    # error becomes exit 2 and one line through the entry point (test_bad_configs_exit_2_with_one_line)
    with pytest.raises(ConfigError) as err:
        train_in_process("pretrain", cfg, tmp_path / "o", ds_config=path)
    line = str(err.value)
    assert "train_micro_batch_size_per_gpu=16 disagrees" in line and "schedule.batch_size gives 2" in line
