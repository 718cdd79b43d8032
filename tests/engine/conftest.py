"""Tiny pretraining runs through the real launchers: a 2-frame-tubelet ViT on 32x32 synthetic MP4s."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "launch" / "pretrain.py"
ZERO2 = REPO / "ds_configs" / "zero2.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env() -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def launch_cmd(args: list, ranks: int = 1, launcher: str = "deepspeed") -> list:
    if launcher == "python":
        return [sys.executable, str(PRETRAIN), *map(str, args)]
    return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), str(PRETRAIN),
            *map(str, args)]


def run(args: list, ranks: int = 1, launcher: str = "deepspeed", timeout: float = 300,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(args, ranks, launcher), cwd=cwd, env=run_env(), capture_output=True,
                          text=True, timeout=timeout)


def start(args: list, ranks: int = 1, log_path: Path = None) -> subprocess.Popen:
    """Background run in its own process group (so kill -9 reaches the launcher and every rank)."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(launch_cmd(args, ranks), cwd=REPO, env=run_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            recs.append(rec)
    return recs


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture
def tiny_config(tmp_path, synthetic_cache):
    """Write a tiny experiment YAML; keyword overrides as {"section": {"key": value}}."""

    def make(**sections) -> Path:
        base = {
            "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 32, "patch_size": 16, "tubelet_size": 2,
                      "embed_dim": 48, "depth": 1, "num_heads": 3, "decoder_embed_dim": 24, "decoder_depth": 1,
                      "decoder_num_heads": 3},
            "masking": {"kind": "random", "ratio": 0.5},
            "data": {"synthetic": True, "synthetic_videos": 12, "synthetic_frames": 12, "synthetic_size": 32,
                     "sampling_rate": 2, "num_workers": 0, "cache_dir": str(synthetic_cache)},
            "optim": {"base_lr": 0.1},
            "schedule": {"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
            "run": {"seed": 0, "log_every": 1, "save_every_epochs": 1, "visualize": False},
        }
        for sec, values in sections.items():
            base.setdefault(sec, {}).update(values)
        path = tmp_path / f"tiny_{len(list(tmp_path.glob('tiny_*.yaml')))}.yaml"
        path.write_text(json.dumps(base, indent=1))  # JSON is YAML
        return path

    return make
