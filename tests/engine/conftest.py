"""Tiny pretraining runs through the real launchers: a 2-frame-tubelet ViT on 32x32 synthetic MP4s.

Fixtures, and ``run``/``start``: launch/pretrain.py shorthands over tests/helpers.py that the engine tests
import as ``from tests.engine.conftest import run, start`` (a bare ``from conftest import`` finds whichever
conftest.py pytest loaded last)."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, launch, launch_cmd
from tests.helpers import start as start_cmd


def run(args: list, ranks: int = 1, launcher: str = "deepspeed", timeout: float = 300,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    """launch/pretrain.py with ``args`` under the ``deepspeed`` launcher with ``ranks`` ranks, or plain ``python``."""
    return launch("pretrain.py", args, 0 if launcher == "python" else ranks, timeout, cwd)


def start(args: list, ranks: int = 1, log_path: Path = None) -> subprocess.Popen:
    """launch/pretrain.py in the background under the ``deepspeed`` launcher, in its own process group."""
    return start_cmd(launch_cmd("pretrain.py", args, ranks), log_path)


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
