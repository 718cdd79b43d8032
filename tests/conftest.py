"""Suite-wide settings and the fixtures every package's tests share. Part-specific fixtures live next to their
tests (tests/data/conftest.py, ...)."""
import json
import os
from pathlib import Path

import pytest
import torch

# Keep every test on the CPU accelerator and quiet; a CUDA box would otherwise pick its GPUs.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The cores are shared between the pytest-xdist workers (README: Tests): each worker's torch gets its share of them.
# Two workers with two OpenMP threads each on 2 cores ran the CPU attention tests ~100x slower (1 s -> 220 s), the
# pools' threads spinning on cores the other worker holds.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, (os.cpu_count() or 2) // _WORKERS))))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _release_ports():
    """The master ports a test took from tests.helpers.free_port are its own until it ends (its runs have ended)."""
    yield
    from tests.helpers import release_ports

    release_ports()


# A tiny pretraining recipe (a 2-frame-tubelet ViT on 32x32 synthetic MP4s) that the loop, evaluation and
# launcher tests share.
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


# The torchcodec backend loads the system's FFmpeg shared libraries, which a fresh machine may not have (README:
# Tests). There its tests (their ids name it) cannot decode; each one checks instead what a user of such a
# machine gets: opening a video with the backend is the setup error that names the packages to install, never a
# bad video. MOTIONMAE_REQUIRE_TORCHCODEC=1 (set by .ci/run, which installs the libraries) makes the real tests
# mandatory: there a missing library fails them.
def _torchcodec_setup_error(item, why: str):
    def runtest():
        from motionmae_ds.data.decode import torchcodec as torchcodec_backend
        from motionmae_ds.data.decode.reader import VideoReader

        with pytest.raises(torchcodec_backend.BackendUnavailable, match="decode backend 'torchcodec' is "
                                                                        "unavailable: .*install") as raised:
            VideoReader(b"\x00\x00\x00\x18ftypmp42" + bytes(64), "torchcodec", name=f"{item.name}.mp4")
        assert str(raised.value).endswith(why)
    return runtest


def pytest_collection_modifyitems(config, items):
    torchcodec_items = [item for item in items if "torchcodec" in item.nodeid]
    if not torchcodec_items or os.environ.get("MOTIONMAE_REQUIRE_TORCHCODEC") == "1":
        return
    from motionmae_ds.data.decode import torchcodec as torchcodec_backend

    try:
        torchcodec_backend.require()
    except torchcodec_backend.BackendUnavailable as exc:
        why = str(exc).removeprefix("decode backend 'torchcodec' is unavailable: ")
        for item in torchcodec_items:
            if isinstance(item, pytest.Function):
                item.runtest = _torchcodec_setup_error(item, why)
