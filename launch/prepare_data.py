"""Scan a dataset list with the chosen decoder; write a cleaned list with true frame counts and a report.

    python launch/prepare_data.py LIST --root DIR --output CLEAN_LIST [--backend auto|decord|pyav] [--fmt ...]
    python launch/prepare_data.py LIST --root DIR --reencode OUT_DIR [--short_side 320] [--keyint 16]
The second form re-encodes every video (short side, short GOP; see motionmae_ds/data/reencode.py) and writes
OUT_DIR/list.txt with true frame counts; a rerun skips the files already done.
Exit 0 when the scan ran (bad entries are in the .report.txt beside the list), 2 with one line for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from motionmae_ds.data.decode import BACKENDS
from motionmae_ds.data.lists import FORMATS, ListFormatError, clean_list
from motionmae_ds.data.reencode import reencode_list
from motionmae_ds.runtime.flags import add_option, add_output


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"prepare_data: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="list file to scan")
    add_output(parser, "cleaned list to write (report beside it)", old=("--out",))
    add_option(parser, "--reencode", metavar="OUT_DIR", help="re-encode into OUT_DIR instead (list.txt there)")
    add_option(parser, "--short_side", old=("--short-side",), type=int, default=320)
    add_option(parser, "--keyint", type=int, default=16, help="frames per GOP of the re-encoded files")
    add_option(parser, "--crf", type=int, default=23)
    add_option(parser, "--root", default="", help="data root prefixed to the list's paths")
    add_option(parser, "--fmt", default="auto", choices=FORMATS)
    add_option(parser, "--backend", default="auto", choices=BACKENDS)
    add_option(parser, "--frame_template", old=("--frame-template",), default="img_{:05d}.jpg")
    add_option(parser, "--frame_start", old=("--frame-start",), type=int, default=1)
    add_option(parser, "--min_frames", old=("--min-frames",), type=int, default=1,
               help="drop entries with fewer decodable frames")
    add_option(parser, "--drop_truncated", old=("--drop-truncated",), action="store_true",
               help="treat files decoding fewer frames than their container lists as bad")
    add_option(parser, "--workers", type=int, default=os.cpu_count() or 1)
    add_option(parser, "--timeout", type=float, default=300.0, help="seconds per file before it counts as bad")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.list):
        parser.error(f"list file not found: {args.list}")
    if args.root and not os.path.isdir(args.root):
        parser.error(f"--root is not a directory: {args.root}")
    if (args.output is None) == (args.reencode is None):
        parser.error("give one of --output CLEAN_LIST and --reencode OUT_DIR")
    if args.reencode is None and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        parser.error(f"--output directory does not exist: {os.path.dirname(os.path.abspath(args.output))}")
    if min(args.workers, args.min_frames, args.short_side, args.keyint) < 1 or args.timeout <= 0:
        parser.error("--workers, --min_frames, --short_side, --keyint and --timeout must be positive")
    try:
        args.frame_template.format(1)
    except (IndexError, KeyError, ValueError):
        parser.error(f"--frame_template must hold one integer field like img_{{:05d}}.jpg, got {args.frame_template!r}")
    bars: list[tqdm] = []  # made at the first file, so that an unusable list prints only its one line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="re-encoded" if args.reencode else "scanned", unit="file",
                             file=sys.stderr, mininterval=2))
        bars[0].update(done - bars[0].n)

    try:
        if args.reencode:
            summary, out, report = reencode_list(args.list, args.reencode, args.root, args.fmt, args.short_side,
                                                 args.keyint, args.crf, workers=args.workers,
                                                 timeout=args.timeout, progress=progress)
            print(f"{summary}\nlist:   {out}\nreport: {report}")
            return 0
        summary, report = clean_list(args.list, args.output, args.root, args.fmt, args.backend, args.frame_template,
                                     args.frame_start, args.min_frames, args.workers, args.timeout,
                                     args.drop_truncated, progress)
    except ListFormatError as exc:  # the list as a whole is unusable (unreadable, no recognisable format)
        parser.error(str(exc))
    finally:
        for bar in bars:
            bar.close()
    print(f"{summary}\nclean list: {args.output}\nreport:     {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
