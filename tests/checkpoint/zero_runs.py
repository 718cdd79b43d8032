"""Real ZeRO-2 checkpoints for the checkpoint and converter tests: tiny models trained a few steps by 2 ranks
under the `deepspeed` launcher (ds_worker.py next to this file). The fixtures are defined here once and
exposed by tests/checkpoint/conftest.py and tests/tools/conftest.py; each checkpoint is made once
per session under the session's base temp dir, whichever directory asks first. Copy before editing one."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import launch

WORKER = Path(__file__).resolve().parent / "ds_worker.py"
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
# build_pretrain_model / build_classifier kwargs of TINY's encoder (and decoders)
TINY_ENCODER = dict(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, embed_dim=48,
                    depth=2, num_heads=3)
TINY_DECODER = dict(decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3)


def deepspeed_run(args: list, ranks: int, timeout: float = 600, script: Path = WORKER) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus RANKS SCRIPT ARGS`` (default script: ds_worker.py); fails the test on a bad exit."""
    assert ranks >= 1
    proc = launch(script, args, ranks, timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def convert(*args) -> subprocess.CompletedProcess:
    """The real launcher, as a user runs it."""
    return launch("convert_checkpoint.py", args, timeout=300)


def _shared(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "zero_runs"
    path.mkdir(exist_ok=True)
    return path


def _zero2_run(tmp_path_factory, config: Path, name: str, steps: int, *extra: str) -> Path:
    """RUN/checkpoints of a 2-rank ZeRO-2 bf16 run of ds_worker.py, made unless this session made it."""
    run = _shared(tmp_path_factory) / name
    ckpt = run / "checkpoints"
    if not (ckpt / "latest").is_file():
        shutil.rmtree(run, ignore_errors=True)
        deepspeed_run(["save", *extra, "--config", config, "--ckpt_dir", ckpt, "--steps", steps], ranks=2)
    return ckpt


@pytest.fixture(scope="session")
def tiny_yaml(tmp_path_factory) -> Path:
    path = _shared(tmp_path_factory) / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.fixture(scope="session")
def zero2_pretrain(tmp_path_factory, tiny_yaml) -> Path:
    """RUN/checkpoints of a 2-rank ZeRO-2 bf16 MotionMAE run, 3 steps (read-only: copy before editing)."""
    return _zero2_run(tmp_path_factory, tiny_yaml, "zero2_pretrain", 3)


@pytest.fixture(scope="session")
def zero2_classifier(tmp_path_factory, tiny_yaml) -> Path:
    """RUN/checkpoints of a 2-rank ZeRO-2 bf16 finetuning classifier, 2 steps (read-only)."""
    return _zero2_run(tmp_path_factory, tiny_yaml, "zero2_classifier", 2, "--classifier")


@pytest.fixture(scope="session")
def convert_cli():
    return convert


@pytest.fixture(scope="session")
def worker():
    return deepspeed_run


def videos_to_hf(videos: torch.Tensor) -> torch.Tensor:
    """Our (B, C, T, H, W) clips as transformers' VideoMAE takes them: (B, T, C, H, W) ``pixel_values``."""
    return videos.permute(0, 2, 1, 3, 4)
