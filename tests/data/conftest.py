"""Session fixtures: real encoded test videos, broken files and JPEG frame folders, made once per run.

Any test under tests/data can request them; helpers to make more live in ``videos.py``.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import videos  # noqa: E402


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def good_videos(video_dir) -> dict[str, Path]:
    """name -> path of a decodable video; see videos.GOOD_VIDEOS for what each one is."""
    paths = {}
    for name, kwargs in videos.GOOD_VIDEOS.items():
        suffix = videos.CODECS[kwargs["codec"]][2]
        paths[name] = videos.make_video(video_dir / f"{name}{suffix}", **kwargs)
    # AVI bytes under an .mp4 name: the backend choice must follow the content, not the suffix.
    paths["avi_named_mp4"] = video_dir / "avi_named_mp4.mp4"
    paths["avi_named_mp4"].write_bytes(paths["avi_bframes"].read_bytes())
    return paths


@pytest.fixture(scope="session")
def bad_videos(video_dir, good_videos) -> dict[str, Path]:
    """name -> path of a file no backend may return frames from (or, truncated, not all listed frames)."""
    return {
        "zero_bytes": videos.make_zero_bytes(video_dir / "zero_bytes.mp4"),
        "text_as_mp4": videos.make_text_file(video_dir / "text_as_mp4.mp4"),
        "audio_only": videos.make_audio_only(video_dir / "audio_only.mkv"),
        "truncated_mp4": videos.make_truncated(good_videos["h264_faststart"], video_dir / "truncated.mp4", 0.5),
        "truncated_avi": videos.make_truncated(good_videos["avi_bframes"], video_dir / "truncated.avi", 0.5),
        "missing": video_dir / "does_not_exist.mp4",
    }


@pytest.fixture(scope="session")
def frame_folders(tmp_path_factory) -> dict[str, dict]:
    """name -> dict(path, template, start, num_frames) of JPEG frame folders."""
    root = tmp_path_factory.mktemp("frames")
    specs = {
        "rgb": dict(template="img_{:05d}.jpg", start=1, num_frames=12),
        "gray": dict(template="img_{:05d}.jpg", start=1, num_frames=8, grayscale=True),
        "custom": dict(template="frame{:04d}.jpeg", start=0, num_frames=6),
    }
    out = {}
    for name, spec in specs.items():
        path = videos.make_frame_folder(root / name, spec["num_frames"], template=spec["template"],
                                        start=spec["start"], grayscale=spec.get("grayscale", False))
        out[name] = dict(path=path, template=spec["template"], start=spec["start"], num_frames=spec["num_frames"])
    return out


@pytest.fixture(scope="session")
def reference():
    """reference(path) -> uint8 (N, H, W, 3) of a forward decode, cached per path."""
    @functools.lru_cache(maxsize=None)
    def decode(path: str) -> np.ndarray:
        return videos.reference_decode(path)

    return lambda path: decode(str(path))
