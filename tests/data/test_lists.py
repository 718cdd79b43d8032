"""List files: every supported format, auto detection, root prefix, and bad lines named by file:line."""
from __future__ import annotations

import pytest

from motionmae_ds.data.lists import ListFormatError, VideoRecord, format_line, read_list, scan_list


def _write(tmp_path, text: str, name: str = "list.txt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_path_label_with_root_blank_lines_and_spaces_in_paths(tmp_path):
    lst = _write(tmp_path, "k400/a.mp4 3\n\n   \nk400/my clip 2.mp4 17\n/abs/b.mp4 0\n")
    records = read_list(lst, root="/data")
    assert records == [
        VideoRecord("/data/k400/a.mp4", 3, 0, None, False, line=1),
        VideoRecord("/data/k400/my clip 2.mp4", 17, 0, None, False, line=4),
        VideoRecord("/abs/b.mp4", 0, 0, None, False, line=5),  # absolute paths ignore the root
    ]


def test_path_frames_label(tmp_path):
    lst = _write(tmp_path, "a.webm 45 12\nb.webm 30 0\n")
    assert read_list(lst) == [VideoRecord("a.webm", 12, 0, 45, False, line=1),
                              VideoRecord("b.webm", 0, 0, 30, False, line=2)]


def test_videomae_v2_pretraining_lists(tmp_path):
    # videos: "path 0 -1" (count unknown); frame folders: "dir start_idx total_frames"
    videos = _write(tmp_path, "k400/a.mp4 0 -1\nk400/b.mp4 0 -1\n", "v.txt")
    assert read_list(videos, root="r") == [VideoRecord("r/k400/a.mp4", -1, 0, None, False, line=1),
                                           VideoRecord("r/k400/b.mp4", -1, 0, None, False, line=2)]
    folders = _write(tmp_path, "ssv2/1 1 45\nssv2/2 1 30\n", "f.txt")
    records = read_list(folders, frame_template="{:05d}.jpg")
    assert records == [VideoRecord("ssv2/1", -1, 1, 45, True, "{:05d}.jpg", 1),
                       VideoRecord("ssv2/2", -1, 1, 30, True, "{:05d}.jpg", 2)]


def test_frame_dir_lists_use_template_and_start(tmp_path):
    lst = _write(tmp_path, "ssv2/1 45 12\nssv2/2 30 7\n")
    records = read_list(lst, frame_template="frame{:04d}.jpeg", frame_start=0)
    assert records[0] == VideoRecord("ssv2/1", 12, 0, 45, True, "frame{:04d}.jpeg", 1)
    assert records[1].num_frames == 30 and records[1].label == 7


@pytest.mark.parametrize("text,fmt", [
    ("a.mp4 3\n", "path_label"),
    ("a.mp4 300 3\n", "path_frames_label"),
    ("a.mp4 0 -1\n", "path_start_total"),
    ("dir 1 45\ndir2 1 30\n", "path_start_total"),
    ("dir 45 3\ndir2 1 30\n", "frame_dir"),
])
def test_auto_detection(tmp_path, text, fmt):
    assert scan_list(_write(tmp_path, text))[2] == fmt


def test_explicit_format_overrides_detection(tmp_path):
    lst = _write(tmp_path, "dir 1 45\n")
    assert read_list(lst, fmt="frame_dir") == [VideoRecord("dir", 45, 1, 1, True, line=1)]


@pytest.mark.parametrize("text,fmt,message", [
    ("a.mp4 3\nb.mp4\n", "auto", r"list.txt:2: expected 'path label' \(path_label\), got 1 field"),
    ("a.mp4 3\nb.mp4 x\n", "auto", r"list.txt:2: label must be an integer, got 'x'"),
    ("a.mp4 3\n\nb.mp4 2.5\n", "auto", r"list.txt:3: label must be an integer, got '2.5'"),
    ("a.mp4 3\nb.mp4 --5\n", "auto", r"list.txt:2: label must be an integer, got '--5'"),
    ("a.mp4 30 1\nb.mp4 3O 1\n", "path_frames_label", r"list.txt:2: num_frames must be an integer, got '3O'"),
    ("a.mp4 30 1\nb.mp4 0 1\n", "path_frames_label", r"list.txt:2: num_frames must be positive, got 0"),
    ("d 30 1\nd2 -4 1\n", "frame_dir", r"list.txt:2: total_frames must be positive, got -4"),
    ("a.mp4 0 -1\nb.mp4 -2 -1\n", "path_start_total", r"list.txt:2: start_idx must be >= 0, got -2"),
    ("a.mp4 0 -1\nb.mp4 0 -7\n", "path_start_total", r"list.txt:2: total_frames must be positive or -1"),
    ("a.mp4 3\nb.mp4 -5\n", "auto", r"list.txt:2: label must be >= 0 \(or -1 for none\), got -5"),
    ("just_a_path.mp4\n", "auto", r"list.txt:1: cannot tell the list format: no numeric field"),
    ("\n\n", "auto", r"list.txt:0: list file has no entries"),
])
def test_bad_lines_name_file_line_and_problem(tmp_path, text, fmt, message):
    with pytest.raises(ListFormatError, match=message) as info:
        read_list(_write(tmp_path, text), fmt=fmt)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_scan_list_collects_every_bad_line(tmp_path):
    lst = _write(tmp_path, "a.mp4 3\nb.mp4\nc.mp4 x\nd.mp4 4\n")
    records, errors, fmt = scan_list(lst)
    assert fmt == "path_label" and [r.path for r in records] == ["a.mp4", "d.mp4"]
    assert [e.line for e in errors] == [2, 3]


def test_missing_or_binary_list_file(tmp_path):
    with pytest.raises(ListFormatError, match="list file not found"):
        read_list(tmp_path / "nope.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00a.mp4 1\n")
    with pytest.raises(ListFormatError, match="not a UTF-8 text file"):
        read_list(binary)
    with pytest.raises(ValueError, match="unknown list format"):
        read_list(binary, fmt="csv")


@pytest.mark.parametrize("fmt,line", [
    ("path_label", "a b.mp4 4"),
    ("path_frames_label", "a b.mp4 30 4"),
    ("path_start_total", "a b.mp4 2 30"),
    ("frame_dir", "a b.mp4 30 4"),
])
def test_format_line_round_trips(tmp_path, fmt, line):
    record = read_list(_write(tmp_path, line + "\n"), fmt=fmt)[0]
    assert format_line(record, fmt) == line
