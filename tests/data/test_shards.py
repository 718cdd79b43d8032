"""WebDataset shards of real videos: writing, the index, reading by byte range (local and fsspec), padding,
corrupt members, and launch/make_shards.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import pytest
import torch
import webdataset as wds

from motionmae_ds.data.datasets import DataLoadError, VideoClipDataset
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.shards import (
    ShardClipDataset,
    ShardError,
    build_index,
    index_part,
    merge_index,
    read_member,
    shard_pattern,
    shard_urls,
    write_shards,
)
from tests.helpers import REPO, call_main

NAMES = ("h264", "vp9", "avi_bframes", "mpeg_ps", "short10")
KW = dict(mode="pretrain", num_frames=4, sampling_rate=2, input_size=32, seed=3)


@pytest.fixture()
def samples(good_videos):
    from videos import GOOD_VIDEOS

    return [(str(good_videos[n]), i, GOOD_VIDEOS[n]["num_frames"]) for i, n in enumerate(NAMES)]


def test_write_shards_splits_by_size_and_index_reads_every_member_back(samples, tmp_path):
    sizes = [Path(p).stat().st_size for p, _, _ in samples]
    limit = sizes[0] + sizes[1] + 2000  # two videos fit in the first shard, then a new one starts
    paths = write_shards(samples, str(tmp_path / "out"), shard_bytes=limit)
    assert all(Path(p).is_file() for p in paths)
    assert not list((tmp_path / "out").glob("*.partial"))
    pattern = shard_pattern(paths)
    assert pattern == str(tmp_path / "out" / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")
    assert shard_urls(pattern) == paths
    index = build_index(pattern)
    assert [(m.label, m.num_frames) for m in index] == [(label, n) for _, label, n in samples]
    assert [read_member(m) for m in index] == [Path(p).read_bytes() for p, _, _ in samples]
    assert index[0].path == f"{paths[0]}:000000000.mp4" and index[1].path == f"{paths[0]}:000000001.webm"
    # videos 0 and 1 fill the first shard (the limit's choice), video 2 starts the next; every shard holds some
    shard_of = [paths.index(m.path.rsplit(":", 1)[0]) for m in index]
    assert shard_of[:3] == [0, 0, 1] and shard_of == sorted(shard_of) and set(shard_of) == set(range(len(paths)))
    # ranks scanning their shares (every 2nd shard) and merging give the same index, in shard order
    parts = index_part(paths, 1, 2) + index_part(paths, 0, 2)
    assert [n for n, _ in parts] == list(range(1, len(paths), 2)) + list(range(0, len(paths), 2))
    assert merge_index(parts, pattern) == index
    # plain WebDataset reads the same samples
    got = [(s["__key__"], int(s["cls"]), len(s.get("mp4", s.get("webm", s.get("avi", s.get("mpg", b""))))))
           for s in wds.WebDataset(pattern, shardshuffle=False)]
    assert got == [(f"{i:09d}", label, size) for i, ((_, label, _), size) in enumerate(zip(samples, sizes))]


def test_shard_items_equal_the_same_files_from_disk_and_pad_evenly(samples, tmp_path):
    paths = write_shards(samples, str(tmp_path / "out"))
    shards = ShardClipDataset(build_index(shard_pattern(paths)), pad_to=4, **KW)
    files = VideoClipDataset([VideoRecord(p, label, 0, n, False) for p, label, n in samples], **KW)
    assert len(shards) == 8 and len(files) == 5
    for epoch in (0, 1):
        shards.set_epoch(epoch)
        files.set_epoch(epoch)
        for i in range(5):
            a, b = shards[i], files[i]
            assert torch.equal(a["video"], b["video"]) and a.get("views") == b.get("views")
            assert (a["label"], a["index"]) == (b["label"], b["index"])
        # the 3 extra items repeat members (k + epoch * 3) % 5, with their own random draws
        extra = [shards[5 + k]["index"] for k in range(3)]
        assert extra == [(k + epoch * 3) % 5 for k in range(3)]
    a, b = shards[5], files[shards[5]["index"]]
    assert not (torch.equal(a["video"], b["video"]) and a.get("views") == b.get("views"))


def test_corrupt_member_is_skipped_and_named(samples, tmp_path, bad_videos):
    broken = tmp_path / "broken.mp4"
    shutil.copy(bad_videos["text_as_mp4"], broken)
    paths = write_shards(samples[:2] + [(str(broken), 7, 30)], str(tmp_path / "out"))
    dataset = ShardClipDataset(build_index(paths[0]), **KW)
    item = dataset[2]
    assert item["index"] != 2
    [(name, reason)] = item["skipped"]
    assert name == f"{paths[0]}:000000002.mp4" and reason


def test_short_read_and_missing_shard_are_bad_members(samples, tmp_path):
    paths = write_shards(samples[:2], str(tmp_path / "out"))
    index = build_index(paths[0])
    data = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(data[: index[1].offset + 100])  # cut inside the second video
    item = ShardClipDataset(index, **KW)[1]
    assert item["skipped"][0][0] == index[1].path and "ends after 100 of" in item["skipped"][0][1]
    Path(paths[0]).unlink()
    with pytest.raises(DataLoadError, match=f"{index[0].path}: cannot read the shard: FileNotFoundError"):
        ShardClipDataset(index, **KW)[0]


def test_fsspec_urls_read_by_byte_range(samples, tmp_path):
    paths = write_shards(samples[:3], str(tmp_path / "out"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/shards/shard-000000.tar", Path(paths[0]).read_bytes())
    index = build_index("memory://shards/shard-{000000..000000}.tar")
    assert [read_member(m) for m in index] == [Path(p).read_bytes() for p, _, _ in samples[:3]]
    local = ShardClipDataset(build_index(paths[0]), **KW)
    assert torch.equal(ShardClipDataset(index, **KW)[1]["video"], local[1]["video"])
    file_url = build_index("file://" + paths[0])
    assert [m.size for m in file_url] == [m.size for m in index]


def test_unusable_shard_sets_raise_one_line(tmp_path):
    with pytest.raises(ShardError, match="pipe: URLs stream only"):
        shard_urls("pipe:curl -s https://example.com/shard-0.tar")
    with pytest.raises(ShardError, match=f"{tmp_path}/none-0.tar: not a readable tar shard .FileNotFoundError"):
        build_index(str(tmp_path / "none-{0..1}.tar"))
    (tmp_path / "text.tar").write_text("not a tar\n" * 100)
    with pytest.raises(ShardError, match="text.tar: not a readable tar shard"):
        build_index(str(tmp_path / "text.tar"))
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(ShardError, match="the shards hold no video member"):
        build_index(str(tmp_path / "empty.tar"))


def test_make_shards_cli(samples, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"{p} {n} {label}\n" for p, label, n in samples[:3]) + f"{samples[3][0]} {samples[3][1]}\n")
    out = tmp_path / "shards"
    result = subprocess.run([sys.executable, str(REPO / "launch" / "make_shards.py"), str(lst),
                             "--output_dir", str(out), "--shard_size_mb", "0.01"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    # mixed formats in one list are a bad line: only the first three entries' format is detected
    assert result.returncode == 2 and f"{lst}:4:" in result.stderr
    lst.write_text("".join(f"{p} {label}\n" for p, label, _ in samples))  # no counts: make_shards decodes
    result = call_main("make_shards.py", [lst, "--output_dir", out, "--shard_size_mb", "0.01"])
    assert result.returncode == 0, result.stderr
    pattern = result.stdout.split("data.shards: ")[1].strip().strip('"')
    assert f"{len(samples)} videos in" in result.stdout
    assert [(m.label, m.num_frames) for m in build_index(pattern)] == [(label, n) for _, label, n in samples]


@pytest.mark.parametrize("args,message", [
    (["missing.txt", "--output_dir", "o"], "missing.txt:0: list file not found"),
    (["{lst}", "--output_dir", "o", "--shard_size_mb", "0"], "--shard_size_mb must be positive"),
    (["{lst}"], "the following arguments are required: --output_dir"),
    (["{gone}", "--output_dir", "o"], "gone.mp4: file not found"),
])
def test_make_shards_bad_arguments_exit_2_with_one_line(tmp_path, args, message, samples):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{samples[0][0]} 0\n")
    gone = tmp_path / "gone.txt"
    gone.write_text(f"{tmp_path / 'gone.mp4'} 0\n")
    result = call_main("make_shards.py", [a.format(lst=lst, gone=gone) for a in args])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
