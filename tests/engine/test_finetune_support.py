"""Helpers shared by the finetuning/evaluation tests (no tests here): tiny configs, the launchers."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ZERO2 = REPO / "ds_configs" / "zero2.json"
TINY_MODEL = {"name": "vit_tiny", "num_classes": 4, "num_frames": 4, "img_size": 32, "patch_size": 16,
              "tubelet_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(script: str, args: list, ranks: int = 0, timeout: float = 300, cwd: Path = REPO
           ) -> subprocess.CompletedProcess:
    """ranks 0: plain ``python`` (one process, no launcher); else the real ``deepspeed`` launcher."""
    path = str(REPO / "launch" / script)
    if ranks:
        cmd = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), path]
    else:
        cmd = [sys.executable, path]
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def motion_lists(root: Path) -> dict:
    from motionmae_ds.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(root, kind="motion_classes", num_videos=32, num_frames=12, size=32)


def write_config(path: Path, **sections) -> Path:
    base = {
        "model": dict(TINY_MODEL, drop_path_rate=0.1),
        "data": {"synthetic": False, "sampling_rate": 2, "flip": False, "scale": [0.5, 1.0], "short_side_size": 32,
                 "rand_aug": "rand-m9-mstd0.5-inc1", "random_erase": 0.25, "num_workers": 0},
        "optim": {"base_lr": 0.05},
        "schedule": {"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
        "finetune": {"init": "none"},
        "eval": {"test_clips": 2, "test_crops": 3, "batch_size": 2, "val_every_epochs": 1},
        "run": {"seed": 0, "log_every": 1, "save_every_epochs": 1},
    }
    for sec, values in sections.items():
        base.setdefault(sec, {}).update(values)
    path.write_text(json.dumps(base, indent=1))  # JSON is YAML
    return path


def save_tiny_classifier(path: Path, seed: int = 0) -> dict:
    from motionmae_ds.models import build_classifier

    torch.manual_seed(seed)
    model = build_classifier(**TINY_MODEL, init_scale=1.0)  # a full-size head: predictions that differ per video
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state}, path)
    return state


def predictions(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
