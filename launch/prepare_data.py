"""Scan a dataset list with the chosen decoder; write a cleaned list with true frame counts and a report.

    python launch/prepare_data.py LIST --root DIR --out CLEAN_LIST [--backend auto|decord|pyav] [--fmt ...]
Exit 0 when the scan ran (bad entries are in CLEAN_LIST.report.txt), 2 with one line for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from motionmae_ds.data.decode import BACKENDS
from motionmae_ds.data.lists import FORMATS, ListFormatError, clean_list


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"prepare_data: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="list file to scan")
    parser.add_argument("--out", required=True, help="cleaned list to write (report beside it)")
    parser.add_argument("--root", default="", help="data root prefixed to the list's paths")
    parser.add_argument("--fmt", default="auto", choices=FORMATS)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--frame-template", default="img_{:05d}.jpg")
    parser.add_argument("--frame-start", type=int, default=1)
    parser.add_argument("--min-frames", type=int, default=1, help="drop entries with fewer decodable frames")
    parser.add_argument("--drop-truncated", action="store_true",
                        help="treat files decoding fewer frames than their container lists as bad")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per file before it counts as bad")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.list):
        parser.error(f"list file not found: {args.list}")
    if args.root and not os.path.isdir(args.root):
        parser.error(f"--root is not a directory: {args.root}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        parser.error(f"--out directory does not exist: {os.path.dirname(os.path.abspath(args.out))}")
    if args.workers < 1 or args.min_frames < 1 or args.timeout <= 0:
        parser.error("--workers, --min-frames and --timeout must be positive")
    try:
        args.frame_template.format(1)
    except (IndexError, KeyError, ValueError):
        parser.error(f"--frame-template must hold one integer field like img_{{:05d}}.jpg, got {args.frame_template!r}")
    last_print = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if done == total or time.monotonic() - last_print[0] > 10:
            last_print[0] = time.monotonic()
            print(f"scanned {done}/{total}", file=sys.stderr, flush=True)

    try:
        summary, report = clean_list(args.list, args.out, args.root, args.fmt, args.backend, args.frame_template,
                                     args.frame_start, args.min_frames, args.workers, args.timeout,
                                     args.drop_truncated, progress)
    except ListFormatError as exc:  # the list as a whole is unusable (unreadable, no recognisable format)
        parser.error(str(exc))
    print(f"{summary}\nclean list: {args.out}\nreport:     {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
