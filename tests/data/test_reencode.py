"""Re-encoding a dataset (motionmae_ds/data/reencode.py, launch/prepare_data.py --reencode) on real files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from videos import make_video, reference_decode

from motionmae_ds.data.decode import VideoReader
from motionmae_ds.data.lists import read_list
from motionmae_ds.data.reencode import output_size, reencode_file, reencode_list

REPO = Path(__file__).resolve().parents[2]


def _keyframes(path: Path) -> tuple[list[int], tuple[int, int]]:
    """Decode-order indices of the keyframe packets (no B-frames before a keyframe in closed GOPs: these are
    the presented indices of the GOP starts) and the stream size."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.width, stream.codec_context.height)
        packets = [p for p in container.demux(stream) if p.size]
        order = np.argsort([p.pts for p in packets])  # presentation rank of each packet
        rank = np.empty(len(packets), int)
        rank[order] = np.arange(len(packets))
        return sorted(int(rank[i]) for i, p in enumerate(packets) if p.is_keyframe), size


def test_output_size_keeps_aspect_even_and_never_upscales():
    assert output_size(640, 360, 320) == (568, 320)
    assert output_size(360, 640, 320) == (320, 568)
    assert output_size(64, 48, 320) == (64, 48)
    assert output_size(101, 75, 50) == (68, 50)


def test_reencoded_file_has_short_side_gop_and_the_same_frames(tmp_path):
    src = make_video(tmp_path / "src.avi", codec="mpeg4", num_frames=50, size=(96, 64), bframes=2, gop=30)
    dst = tmp_path / "out" / "src.mp4"
    assert reencode_file(str(src), str(dst), short_side=32, keyint=8) == 50
    keys, size = _keyframes(dst)
    assert size == (48, 32)
    assert keys == list(range(0, 50, 8))
    frames = reference_decode(dst)
    assert frames.shape == (50, 32, 48, 3)
    # frame i of the output is frame i of the source (the moving square makes neighbours differ clearly)
    source = reference_decode(src).astype(np.float32)
    small = source.reshape(50, 32, 2, 48, 2, 3).mean(axis=(2, 4))
    errors = np.abs(frames.astype(np.float32)[:, None] - small[None]).mean(axis=(2, 3, 4))
    assert (errors.argmin(axis=1) == np.arange(50)).all()
    with VideoReader(str(dst), "auto") as reader:
        assert reader.num_frames == 50
        np.testing.assert_array_equal(np.asarray(reader.get([3, 17, 40])), frames[[3, 17, 40]])
    assert not list(dst.parent.glob("*.partial*"))


def test_reencode_list_cli_writes_true_counts_reports_failures_and_resumes(tmp_path, bad_videos):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    make_video(root / "a.mp4", num_frames=30, size=(80, 60), gop=30)
    make_video(root / "sub" / "b.webm", codec="vp9", num_frames=20, size=(60, 80), gop=20)
    shutil.copy(bad_videos["text_as_mp4"], root / "broken.mp4")
    lst = tmp_path / "train.txt"
    shutil.copy(root / "a.mp4", root / "a.mov")
    lst.write_text("a.mp4 3\nsub/b.webm 1\nbroken.mp4 2\nbad line here x\na.mov 4\n")
    out = tmp_path / "small"
    cmd = [sys.executable, str(REPO / "launch" / "prepare_data.py"), str(lst), "--root", str(root),
           "--reencode", str(out), "--short_side", "40", "--keyint", "4", "--workers", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "5 entries: 2 re-encoded, 0 already done, 1 bad lines, 2 failed" in result.stdout
    assert (out / "list.txt").read_text().splitlines() == ["a.mp4 30 3", "sub/b.mp4 20 1"]
    report = (out / "list.txt.report.txt").read_text()
    assert f"failed    {lst}:3: {root / 'broken.mp4'}: " in report
    assert f"bad line  {lst}:4:" in report
    assert f"failed    {lst}:5: {root / 'a.mov'}: output {out / 'a.mp4'} is also line 1's" in report
    assert _keyframes(out / "a.mp4") == (list(range(0, 30, 4)), (54, 40))
    assert _keyframes(out / "sub" / "b.mp4")[1] == (40, 54)
    records = read_list(out / "list.txt", root=str(out))
    assert [len(reference_decode(r.path)) for r in records] == [30, 20]

    # a second run skips what is done; a half-written temp file of a killed run is not taken for a done one
    stamp = os.stat(out / "a.mp4").st_mtime_ns
    (out / "sub" / "b.mp4").rename(out / "sub" / "b.partial.mp4")
    summary, list_out, _ = reencode_list(str(lst), str(out), str(root), short_side=40, keyint=4)
    assert str(summary) == "5 entries: 1 re-encoded, 1 already done, 1 bad lines, 2 failed"
    assert os.stat(out / "a.mp4").st_mtime_ns == stamp
    assert Path(list_out).read_text().splitlines() == ["a.mp4 30 3", "sub/b.mp4 20 1"]
    assert not (out / "sub" / "b.partial.mp4").exists()
