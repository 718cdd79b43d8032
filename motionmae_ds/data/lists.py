"""Dataset list files in the formats users already have, read into VideoRecords.

Formats (one entry per line, whitespace separated, numeric fields taken from the right so that paths
may contain spaces):
    path_label          path label                      VideoMAE finetuning lists (video files)
    path_frames_label   path num_frames label           VideoMAE lists with counts (what prepare_data writes)
    path_start_total    path start_idx total_frames     VideoMAEv2 pretraining; total -1 = unknown, no label
    frame_dir           dir total_frames label          frame folders (e.g. SSv2 as JPEGs)
"auto" decides from the first entry: 1 number -> path_label, 3 numbers -> path_start_total, 2 numbers ->
frame_dir when the path has no video file suffix, else path_frames_label.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

FORMATS = ("auto", "path_label", "path_frames_label", "path_start_total", "frame_dir")
# the numeric fields after the path, in order
_FIELD_NAMES = {
    "path_label": ("label",),
    "path_frames_label": ("num_frames", "label"),
    "path_start_total": ("start_idx", "total_frames"),
    "frame_dir": ("total_frames", "label"),
}
VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".ogv",
)


class ListFormatError(ValueError):
    """A bad line in a list file; ``str(e)`` is ``file:line: what is wrong``."""

    def __init__(self, list_path: str, line: int, reason: str) -> None:
        self.list_path, self.line, self.reason = str(list_path), line, reason
        super().__init__(f"{self.list_path}:{line}: {reason}")

    def __reduce__(self):
        return (type(self), (self.list_path, self.line, self.reason))


@dataclass(frozen=True)
class VideoRecord:
    """One entry. Frame ``i`` of the record is decode index ``start + i`` of a video, or the file
    ``frame_template.format(start + i)`` inside a frame folder. ``num_frames`` None = not known
    (count on open); ``label`` -1 = none given (pretraining lists)."""

    path: str
    label: int
    start: int
    num_frames: int | None
    is_frame_dir: bool
    frame_template: str = "img_{:05d}.jpg"
    line: int = 0


def is_video_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def _data_lines(list_path: str) -> Iterator[tuple[int, str]]:
    try:
        with open(list_path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield number, line.strip()
    except FileNotFoundError:
        raise ListFormatError(list_path, 0, "list file not found") from None
    except UnicodeDecodeError as exc:
        raise ListFormatError(list_path, 0, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _trailing_ints(text: str) -> int:
    count = 0
    for token in reversed(text.split()[1:]):
        if not _is_int(token):
            break
        count += 1
    return count


def _is_int(token: str) -> bool:
    return token.lstrip("+-").isdigit()


def detect_format(list_path: str, first_line: str, line_number: int) -> str:
    numbers = _trailing_ints(first_line)
    if numbers == 0:
        raise ListFormatError(list_path, line_number, f"cannot tell the list format: no numeric field in {first_line!r}")
    if numbers == 1:
        return "path_label"
    if numbers == 3:
        return "path_start_total"
    if numbers > 3:
        raise ListFormatError(list_path, line_number, f"cannot tell the list format: {numbers} numeric fields")
    path = first_line.rsplit(None, 2)[0]
    return "path_frames_label" if is_video_file(path) else "frame_dir"


def parse_line(
    list_path: str, number: int, line: str, fmt: str, root: str, frame_template: str, frame_start: int
) -> VideoRecord:
    """One non-blank line -> VideoRecord; raises ListFormatError naming ``list_path:number``."""
    names = _FIELD_NAMES[fmt]
    parts = line.rsplit(None, len(names))
    if len(parts) != len(names) + 1:
        want = " ".join(("path",) + names)
        raise ListFormatError(list_path, number, f"expected '{want}' ({fmt}), got {len(parts)} field(s): {line!r}")
    path, fields = parts[0], parts[1:]
    values = {}
    for name, token in zip(names, fields):
        if not _is_int(token):
            raise ListFormatError(list_path, number, f"{name} must be an integer, got {token!r}")
        values[name] = int(token)
    full_path = os.path.join(root, path) if root else path
    if fmt == "path_start_total":
        if values["start_idx"] < 0:
            raise ListFormatError(list_path, number, f"start_idx must be >= 0, got {values['start_idx']}")
        total = values["total_frames"]
        if total == 0 or total < -1:
            raise ListFormatError(list_path, number, f"total_frames must be positive or -1 (unknown), got {total}")
        return VideoRecord(full_path, -1, values["start_idx"], None if total == -1 else total,
                           not is_video_file(path), frame_template, number)
    label = values["label"]
    if label < -1:
        raise ListFormatError(list_path, number, f"label must be >= 0 (or -1 for none), got {label}")
    if fmt == "path_label":
        return VideoRecord(full_path, label, 0, None, False, frame_template, number)
    count_name = names[0]
    if values[count_name] <= 0:
        raise ListFormatError(list_path, number, f"{count_name} must be positive, got {values[count_name]}")
    is_dir = fmt == "frame_dir"
    return VideoRecord(full_path, label, frame_start if is_dir else 0, values[count_name], is_dir, frame_template, number)


def scan_list(
    list_path: str | os.PathLike,
    fmt: str = "auto",
    root: str = "",
    frame_template: str = "img_{:05d}.jpg",
    frame_start: int = 1,
) -> tuple[list[VideoRecord], list[ListFormatError], str]:
    """Parse every line, collecting bad lines instead of stopping: (records, errors, resolved format)."""
    list_path = str(list_path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; one of {', '.join(FORMATS)}")
    records: list[VideoRecord] = []
    errors: list[ListFormatError] = []
    for number, line in _data_lines(list_path):
        try:
            if fmt == "auto":
                fmt = detect_format(list_path, line, number)
            records.append(parse_line(list_path, number, line, fmt, root, frame_template, frame_start))
        except ListFormatError as exc:
            errors.append(exc)
    return records, errors, fmt


def read_list(
    list_path: str | os.PathLike,
    fmt: str = "auto",
    root: str = "",
    frame_template: str = "img_{:05d}.jpg",
    frame_start: int = 1,
) -> list[VideoRecord]:
    """All entries of a list file; the first bad line raises ListFormatError (``file:line: reason``)."""
    records, errors, _ = scan_list(list_path, fmt, root, frame_template, frame_start)
    if errors:
        raise errors[0]
    if not records:
        raise ListFormatError(str(list_path), 0, "list file has no entries")
    return records


def format_line(record: VideoRecord, fmt: str, path: str | None = None) -> str:
    """The list line for ``record`` in ``fmt`` (``path`` overrides the record's, e.g. root-relative)."""
    path = record.path if path is None else path
    if fmt == "path_label":
        return f"{path} {record.label}"
    total = -1 if record.num_frames is None else record.num_frames
    if fmt == "path_start_total":
        return f"{path} {record.start} {total}"
    if fmt in ("path_frames_label", "frame_dir"):
        return f"{path} {total} {record.label}"
    raise ValueError(f"cannot write list format {fmt!r}")
