"""Re-encode a dataset to a small short side and a short GOP, so that random clips decode fast.

A clip starting at frame s of an H.264 file costs a decode from the keyframe before s: with x264's default
keyint of 250 that is ~s + clip length frames, with keyint 16 at most 15 + clip length. The sweep that chose
the default keyint is in docs/BENCHMARKS.md ("Re-encoding: keyint").

Each file becomes ``OUT_DIR/<its path relative to the list's root, suffix .mp4>``: H.264 (libx264, one thread
per worker, closed GOPs of exactly ``keyint`` frames, no scene-cut keyframes, ``tune=fastdecode``: no CABAC,
no deblocking, cheaper to decode for ~10% more bytes), yuv420p, constant frame rate
(the source's average rate; frame ``i`` of the output is presented frame ``i`` of the source), no audio,
scaled so that the shorter side is ``short_side`` (never up-scaled; both sides even).

Resumable: a file is written under a temporary name and renamed when complete, so an existing output is a
finished one and a second run skips it (its frame count is read from the MP4 index, no decode).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

from .lists import ListFormatError, VideoRecord, format_line, map_in_pool, scan_list

TMP_SUFFIX = ".partial.mp4"


@dataclass
class ReencodeSummary:
    entries: int = 0      # non-blank lines
    encoded: int = 0      # written by this run
    skipped: int = 0      # already done by an earlier run
    bad_lines: int = 0
    failed: int = 0       # could not be decoded or encoded

    def __str__(self) -> str:
        return (f"{self.entries} entries: {self.encoded} re-encoded, {self.skipped} already done, "
                f"{self.bad_lines} bad lines, {self.failed} failed")


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` (never larger than the source), both even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def output_path(record_path: str, root: str, out_dir: str) -> str:
    """Where ``record_path`` goes under ``out_dir``: its path relative to ``root`` (or its name), as .mp4."""
    rel = os.path.relpath(record_path, root) if root else record_path
    if os.path.isabs(rel) or rel.startswith(".."):
        rel = os.path.basename(record_path)
    return os.path.join(out_dir, os.path.splitext(rel)[0] + ".mp4")


def done_frames(path: str) -> int | None:
    """Frame count of a finished output (from the MP4 index, no decode), None when unreadable."""
    try:
        with av.open(path) as container:
            frames = container.streams.video[0].frames
    except (av.FFmpegError, IndexError, OSError):
        return None
    return frames or None


def reencode_file(src: str, dst: str, short_side: int = 320, keyint: int = 16, crf: int = 23,
                  preset: str = "veryfast", tune: str = "fastdecode") -> int:
    """Decode ``src`` forward, write ``dst`` (see the module docstring); returns the frames written.

    Raises whatever the decoder or encoder raise; ``dst`` only appears once it is complete."""
    tmp = dst[: -len(".mp4")] + TMP_SUFFIX if dst.endswith(".mp4") else dst + TMP_SUFFIX
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    written = 0
    try:
        with av.open(src) as source, av.open(tmp, mode="w", format="mp4") as out:
            stream_in = source.streams.video[0]
            stream_in.thread_count = 1
            rate = stream_in.average_rate or stream_in.guessed_rate or Fraction(25, 1)
            width, height = output_size(stream_in.codec_context.width, stream_in.codec_context.height,
                                        short_side)
            stream = out.add_stream("libx264", rate=Fraction(rate))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = keyint
            stream.codec_context.thread_count = 1
            stream.options = {"crf": str(crf), "preset": preset, "threads": "1",
                              "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0",
                              **({"tune": tune} if tune else {})}
            for frame in source.decode(stream_in):
                picture = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                picture.pts, picture.time_base = written, Fraction(1, 1) / Fraction(rate)
                picture.pict_type = av.video.frame.PictureType.NONE  # a source I-frame would force a keyframe
                out.mux(stream.encode(picture))
                written += 1
            out.mux(stream.encode())
        if written == 0:
            raise ValueError("no video frames decoded")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return written


def _job(src: str, dst: str, short_side: int, keyint: int, crf: int, preset: str) -> tuple[int | None, str, bool]:
    """(frames, reason, was_done) for one file, never raising: a scan reports every file."""
    if os.path.exists(dst):
        frames = done_frames(dst)
        if frames is not None:
            return frames, "", True
    try:
        return reencode_file(src, dst, short_side, keyint, crf, preset), "", False
    except Exception as exc:  # noqa: BLE001 - any failure of a file goes to the report
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", False


def reencode_list(
    list_path: str, out_dir: str, root: str = "", fmt: str = "auto", short_side: int = 320, keyint: int = 16,
    crf: int = 23, preset: str = "veryfast", workers: int = 1, timeout: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ReencodeSummary, str, str]:
    """Re-encode every video entry of ``list_path`` into ``out_dir``.

    Writes ``out_dir/list.txt`` (``path num_frames label``, paths relative to ``out_dir``, true frame counts of
    the new files) and ``out_dir/list.txt.report.txt`` (every bad line and failed file with the reason).
    Frame folders are not re-encoded (reported). Returns (summary, list path, report path)."""
    records, line_errors, fmt = scan_list(list_path, fmt, root)
    if not records and not line_errors:
        raise ListFormatError(list_path, 0, "list file has no entries")
    os.makedirs(out_dir, exist_ok=True)
    summary = ReencodeSummary(entries=len(records) + len(line_errors), bad_lines=len(line_errors))
    report = [f"bad line  {e}" for e in line_errors]
    targets = [output_path(r.path, root, out_dir) for r in records]
    results = _run_pool(records, targets, (short_side, keyint, crf, preset), workers, timeout, progress)
    lines = []
    for record, dst, (frames, reason, was_done) in zip(records, targets, results):
        if frames is not None and frames <= record.start:
            frames, reason = None, f"start_idx {record.start} is past the last of its {frames} frames"
        if frames is None:
            summary.failed += 1
            report.append(f"failed    {list_path}:{record.line}: {record.path}: {reason}")
            continue
        summary.skipped += was_done
        summary.encoded += not was_done
        # a start index into the source stays an index into the re-encoded file (same frames, same order)
        kept = VideoRecord(os.path.relpath(dst, out_dir), record.label, record.start, frames - record.start, False)
        lines.append(format_line(kept, "path_start_total" if fmt == "path_start_total" else "path_frames_label"))
    list_out = os.path.join(out_dir, "list.txt")
    with open(list_out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(list_out + ".tmp", list_out)
    report_path = list_out + ".report.txt"
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(f"# {list_path} -> {out_dir} (short side {short_side}, keyint {keyint}, crf {crf})\n# {summary}\n")
        f.writelines(line + "\n" for line in report)
    return summary, list_out, report_path


def _run_pool(records: list[VideoRecord], targets: list[str], options: tuple, workers: int, timeout: float,
              progress: Callable[[int, int], None] | None) -> list[tuple]:
    """_job over all records in worker processes; a file whose decoder hangs gets a reason, the pool a restart."""
    results: list[tuple | None] = [None] * len(records)
    first_line: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.is_frame_dir:
            results[i] = (None, "frame folders are not re-encoded", False)
        elif targets[i] in first_line:  # e.g. a.avi and a.mp4 side by side; one output each
            results[i] = (None, f"output {targets[i]} is also line {first_line[targets[i]]}'s", False)
        else:
            first_line[targets[i]] = record.line
    pending = [i for i in range(len(records)) if results[i] is None]
    finished = map_in_pool(_job, {i: (records[i].path, targets[i], *options) for i in pending}, workers, timeout,
                           (None, f"did not finish within {timeout:g}s (hung or crashed)", False), progress,
                           done=len(records) - len(pending), total=len(records))
    for i, result in finished.items():
        results[i] = result
    return results  # type: ignore[return-value]
