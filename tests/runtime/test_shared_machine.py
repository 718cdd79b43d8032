"""What goes wrong on shared machines, through the real ``deepspeed`` launcher: a busy rendezvous port and an output
path that is a file are exit 2 with one line before any model is built; a checkpoint write that fails on a full
disk (a file-size limit in the ranks) leaves the previous checkpoint and ``latest`` intact, removes its partial
files and stops with exit 2 and one line; a decoder backend that cannot load is a setup error naming the library."""
import re
import socket
import subprocess
import sys

import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_model
from motionmae_ds.config import config_from_dict
from motionmae_ds.data.decode import torchcodec as torchcodec_backend
from tests.helpers import REPO, ZERO2, free_port, launch_cmd, read_log, run_env

PRETRAIN = REPO / "launch" / "pretrain.py"
HELD_SAVE = REPO / "tests" / "runtime" / "held_save_pretrain.py"


def _run(cmd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=run_env(**env), capture_output=True, text=True, timeout=600)


def _error_line(res, prefix: str, before_model: bool = True) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith(prefix)]
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(lines) >= 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    if before_model:  # stopped before the model and engine were built
        assert "rank(s), batch" not in res.stdout, res.stdout[-3000:]
    return lines[0]


def test_busy_port_and_output_file_are_exit_2_before_any_model(tiny_config, tmp_path):
    cfg = tiny_config()
    with socket.socket() as holder:  # another run's rendezvous store on the port
        port = free_port()
        holder.bind(("", port))
        holder.listen()
        cmd = ["deepspeed", "--num_gpus", "1", "--master_port", str(port), str(PRETRAIN), "--config", str(cfg),
               "--deepspeed_config", str(ZERO2), "--output_dir", str(tmp_path / "run")]
        line = _error_line(_run(cmd), "error:")
    assert f"rendezvous port {port}" in line and "already in use" in line and "--master_port" in line, line

    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    res = _run(launch_cmd("pretrain.py", ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", a_file],
                          ranks=1))
    line = _error_line(res, "config error:")
    assert f"output directory {a_file} is a file" in line and "--output_dir" in line, line
    assert a_file.read_text() == "not a directory"


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_config, tmp_path):
    # 3 steps per epoch on 2 ranks; checkpoints at steps 2 and 4. After the first, no file of a rank may grow past
    # 64 KiB: the step-4 checkpoint's files (the model states, each rank's optimizer shard) cannot be written
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 2, "save_every_epochs": 0, "keep_last": 0, "log_every": 2})
    out = tmp_path / "run"
    res = _run(launch_cmd(HELD_SAVE, ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=2),
               MOTIONMAE_TEST_FSIZE_AFTER_SAVE=str(64 * 1024))
    line = _error_line(res, "error: checkpoint", before_model=False)
    ckpts = out / "checkpoints"
    assert f"{ckpts / 'step00000004'} could not be written" in line, line
    assert f"previous checkpoint {ckpts / 'step00000002'} and latest are intact" in line, line
    assert re.search(r"\d+ MiB free there", line), line
    assert (ckpts / "latest").read_text().strip() == "step00000002"
    # nothing partial left: no temporary tag or `latest`, no other tag (DeepSpeed's conversion scripts stay)
    assert [p.name for p in ckpts.iterdir() if p.is_dir() or p.name.startswith(".")] == ["step00000002"]
    assert [r["step"] for r in read_log(out)][-1] == 4
    # the previous checkpoint loads: exact fp32 weights into a fresh model
    client = ckpt.read_client_state(ckpts, "step00000002")
    model = build_model(config_from_dict(client["config"]))
    model.load_state_dict(ckpt.fp32_state_dict(ckpts, "step00000002"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_decoder_backend_that_cannot_load_is_a_setup_error(tiny_config, tmp_path):
    # one of FFmpeg's libraries broken where the dynamic loader looks first: the real loading path fails on it
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "libavfilter.so.8").write_bytes(b"")
    res = subprocess.run([sys.executable, str(PRETRAIN), "--config", str(tiny_config()), "--output_dir",
                          str(tmp_path / "run"), "--set", "data.decode_backend=torchcodec"], cwd=REPO,
                         env=run_env(LD_LIBRARY_PATH=str(libs)), capture_output=True, text=True, timeout=300)
    line = _error_line(res, "setup error:")
    assert "decode backend 'torchcodec' is unavailable" in line and "apt-get install" in line, line
    if torchcodec_backend.available():  # this machine has FFmpeg 5: the broken library is the one named
        assert "libavfilter.so.8: file too short" in line and "apt-get install libavfilter8" in line, line
    assert "unreadable" not in res.stderr
