"""Dataset list files in the formats users already have, read into VideoRecords.

Formats (one entry per line, whitespace separated, numeric fields taken from the right so that paths
may contain spaces):
    path_label          path label                      VideoMAE finetuning lists (video files)
    path_frames_label   path num_frames label           VideoMAE lists with counts (what prepare_data writes)
    path_start_total    path start_idx total_frames     VideoMAEv2 pretraining; total -1 = unknown, no label
    frame_dir           dir total_frames label          frame folders (e.g. SSv2 as JPEGs)
"auto" decides from the first entries (see detect_format); pass the format when a list is ambiguous.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

_INT = re.compile(r"[+-]?[0-9]+")
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
    return _INT.fullmatch(token) is not None


def detect_format(list_path: str, lines: list[tuple[int, str]]) -> str:
    """Guess the format from the first entries (``(line number, text)`` pairs).

    Two numbers are ambiguous; VideoMAEv2's ``path start_idx total_frames`` is recognised by a total of
    -1, a start of 0 (never a valid count), or every first number <= 1 in a frame-folder list (folders of
    one frame are not a dataset, start indices 0/1 are the norm).
    """
    number, first = lines[0]
    numbers = _trailing_ints(first)
    if numbers == 0:
        raise ListFormatError(list_path, number, f"cannot tell the list format: no numeric field in {first!r}")
    if numbers == 1:
        return "path_label"
    sample = [text.rsplit(None, 2) for _, text in lines[:100] if _trailing_ints(text) >= 2]
    pairs = [(int(p[1]), int(p[2])) for p in sample]
    if any(b == -1 or a == 0 for a, b in pairs):
        return "path_start_total"
    if is_video_file(sample[0][0]):
        return "path_frames_label"
    return "path_start_total" if all(a <= 1 for a, _ in pairs) else "frame_dir"


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
    return VideoRecord(full_path, label, frame_start if is_dir else 0, values[count_name], is_dir, frame_template,
                       number)


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
    lines = list(_data_lines(list_path))
    if fmt == "auto" and lines:
        fmt = detect_format(list_path, lines)
    for number, line in lines:
        try:
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


# ---- cleaning a list: true decodable counts for every entry (launch/prepare_data.py) ----

@dataclass
class CleanSummary:
    entries: int = 0          # non-blank lines
    kept: int = 0
    bad_lines: int = 0        # lines that do not parse
    bad_files: int = 0        # entries that do not decode (or are shorter than min_frames)
    truncated: int = 0        # entries that decode fewer frames than their container lists
    recounted: int = 0        # kept entries whose count in the list was wrong

    def __str__(self) -> str:
        return (f"{self.entries} entries: {self.kept} kept, {self.bad_lines} bad lines, {self.bad_files} bad "
                f"files, {self.truncated} truncated, {self.recounted} frame counts corrected")


def probe_record(record: VideoRecord, backend: str = "auto") -> tuple[int | None, str]:
    """(usable frame count from ``record.start`` on, note) or (None, reason). Decodes everything."""
    from motionmae_ds.data.decode import VideoDecodeError, count_decodable_frames, probe_video

    try:
        if record.is_frame_dir:
            total = count_decodable_frames(record.path, record.frame_template, record.start)
            return total, ""
        info = probe_video(record.path, backend)
        total = info.num_frames - record.start
    except VideoDecodeError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 - a scan reports every file, whatever breaks
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if total <= 0:
        return None, f"start_idx {record.start} is past the last decodable frame"
    if info.truncated:
        return total, f"truncated: the container lists {info.listed_frames} frames, {info.num_frames} decode"
    return total, ""


def map_in_pool(fn: Callable, calls: dict[int, tuple], workers: int, timeout: float, timed_out: Any,
                progress: Callable[[int, int], None] | None = None, done: int = 0, total: int | None = None
                ) -> dict[int, Any]:
    """``{i: fn(*calls[i])}``, computed in forked worker processes; ``progress(done, total)`` after each.

    A hung native decoder cannot be interrupted in-process: a call that takes longer than ``timeout``
    seconds (or whose worker crashed: its result never arrives either) gets ``timed_out``, the pool is
    torn down (terminate) and the remaining calls go to a fresh one.
    """
    import multiprocessing

    results: dict[int, Any] = {}
    total = len(calls) + done if total is None else total
    pending = list(calls)
    while pending:
        with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
            jobs = {i: pool.apply_async(fn, calls[i]) for i in pending}
            for position, i in enumerate(pending):
                try:
                    results[i] = jobs[i].get(timeout)
                except multiprocessing.TimeoutError:
                    results[i] = timed_out
                    pending = pending[position + 1:]
                    break
                finally:
                    done += 1
                    if progress is not None:
                        progress(done, total)
            else:
                pending = []
    return results


def _probe_all(
    records: list[VideoRecord], backend: str, workers: int, timeout: float, progress: Callable | None
) -> list[tuple]:
    """probe_record over all records in worker processes; a file that hangs or crashes the decoder
    gets a reason instead of stopping the scan."""
    results = map_in_pool(probe_record, {i: (record, backend) for i, record in enumerate(records)}, workers,
                          timeout, (None, f"decoder did not finish within {timeout:g}s (hung or crashed)"), progress)
    return [results[i] for i in range(len(records))]


def clean_list(
    list_path: str | os.PathLike,
    out_path: str | os.PathLike,
    root: str = "",
    fmt: str = "auto",
    backend: str = "auto",
    frame_template: str = "img_{:05d}.jpg",
    frame_start: int = 1,
    min_frames: int = 1,
    workers: int = 1,
    timeout: float = 300.0,
    drop_truncated: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CleanSummary, str]:
    """Write ``out_path`` (good entries, true counts) and ``out_path + ".report.txt"`` (every bad line or
    file and why, every truncated file and every corrected count). Truncated files keep their decodable
    frames unless ``drop_truncated``. ``progress(done, total)`` is called as entries finish. Paths stay as
    written in the list (relative to ``root``). Lists without counts (path_label) come out as path_frames_label.
    Returns (summary, report path)."""
    records, line_errors, fmt = scan_list(list_path, fmt, root, frame_template, frame_start)
    out_fmt = "path_frames_label" if fmt in ("auto", "path_label") else fmt
    summary = CleanSummary(bad_lines=len(line_errors))
    report = [f"bad line  {e}" for e in line_errors]
    prefix = os.path.join(root, "") if root else ""
    lines = []
    for record, (count, reason) in zip(records, _probe_all(records, backend, workers, timeout, progress)):
        where = f"{list_path}:{record.line}: {record.path}"
        if count is not None and count < min_frames:
            count, reason = None, f"only {count} decodable frames (min_frames {min_frames})"
        if count is not None and reason:  # decodes, but fewer frames than the container lists
            summary.truncated += 1
            if drop_truncated:
                count = None
            else:
                report.append(f"truncated {where}: {reason}; kept with {count} frames")
        if count is None:
            summary.bad_files += 1
            report.append(f"bad file  {where}: {reason}")
            continue
        if record.num_frames is not None and record.num_frames != count:
            summary.recounted += 1
            report.append(f"recounted {where}: listed {record.num_frames} frames, {count} decode")
        written = record.path[len(prefix):] if prefix and record.path.startswith(prefix) else record.path
        lines.append(format_line(VideoRecord(written, record.label, record.start, count, record.is_frame_dir), out_fmt))
    summary.entries = len(records) + len(line_errors)
    summary.kept = len(lines)
    report_path = str(out_path) + ".report.txt"
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(f"# {list_path} -> {out_path} (format {fmt} -> {out_fmt}, backend {backend})\n# {summary}\n")
        f.writelines(line + "\n" for line in report)
    return summary, report_path
