"""Real ZeRO-2 checkpoints for the conversion tests: tiny models trained a few steps by 2 ranks under the
`deepspeed` launcher (tests/tools/ds_worker.py), made once per session and copied before any test edits one."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "ds_worker.py"
CONVERT = REPO / "launch" / "convert_checkpoint.py"
TINY = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 32, "patch_size": 16, "tubelet_size": 2,
              "embed_dim": 48, "depth": 2, "num_heads": 3, "decoder_embed_dim": 24, "decoder_depth": 1,
              "decoder_num_heads": 3},
    "masking": {"kind": "random", "ratio": 0.5},
    "data": {"synthetic": True, "num_workers": 0},
    "optim": {"base_lr": 0.01},
    "schedule": {"epochs": 1, "warmup_epochs": 0, "batch_size": 2},
    "run": {"seed": 0, "visualize": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env() -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def deepspeed_run(args: list, ranks: int, timeout: float = 600, script: Path = WORKER) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus RANKS SCRIPT ARGS`` (default script: ds_worker.py); fails the test on a bad exit."""
    cmd = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), str(script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def convert(*args) -> subprocess.CompletedProcess:
    """The real launcher, as a user runs it."""
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tools_cfg") / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.fixture(scope="session")
def zero2_pretrain(tmp_path_factory, tiny_yaml) -> Path:
    """RUN/checkpoints of a 2-rank ZeRO-2 bf16 MotionMAE run, 3 steps (read-only: copy before editing)."""
    ckpt = tmp_path_factory.mktemp("zero2_pretrain") / "checkpoints"
    deepspeed_run(["save", "--config", tiny_yaml, "--ckpt_dir", ckpt, "--steps", 3], ranks=2)
    return ckpt


@pytest.fixture(scope="session")
def zero2_classifier(tmp_path_factory, tiny_yaml) -> Path:
    """RUN/checkpoints of a 2-rank ZeRO-2 bf16 finetuning classifier, 2 steps (read-only)."""
    ckpt = tmp_path_factory.mktemp("zero2_classifier") / "checkpoints"
    deepspeed_run(["save", "--classifier", "--config", tiny_yaml, "--ckpt_dir", ckpt, "--steps", 2], ranks=2)
    return ckpt


@pytest.fixture(scope="session")
def convert_cli():
    return convert


@pytest.fixture(scope="session")
def worker():
    return deepspeed_run
