"""Pack the videos of a list file into WebDataset tar shards (video bytes, label, frame count per sample).

    python launch/make_shards.py LIST --output_dir DIR [--root ROOT] [--shard_size_mb 1024] [--fmt ...]
Prints the ``data.shards`` value to train from (DIR/shard-{000000..N}.tar). Frame counts come from the list
(run prepare_data.py first for true counts); entries without one are counted by decoding.
Exit 0 when the shards are written, 2 with one line for bad arguments or a bad list.
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from motionmae_ds.data.decode import VideoDecodeError, count_frames
from motionmae_ds.data.lists import FORMATS, ListFormatError, read_list
from motionmae_ds.data.shards import shard_pattern, write_shards
from motionmae_ds.runtime.flags import add_option, add_output_dir


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"make_shards: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", help="list file of the videos (any format lists.py reads, video files only)")
    add_output_dir(parser, "directory for the shards", required=True, old=("--out",))
    add_option(parser, "--root", default="", help="data root prefixed to the list's paths")
    add_option(parser, "--fmt", default="auto", choices=FORMATS)
    add_option(parser, "--shard_size_mb", old=("--shard-size-mb",), type=float, default=1024.0,
               help="approximate bytes per shard, in MiB")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shard_size_mb <= 0:
        parser.error("--shard_size_mb must be positive")
    try:
        records = read_list(args.list, fmt=args.fmt, root=args.root)
    except ListFormatError as exc:
        parser.error(str(exc))
    for r in records:
        if r.is_frame_dir or r.start:
            parser.error(f"{args.list}:{r.line}: {r.path}: only whole video files can be sharded")
        if not os.path.isfile(r.path):
            parser.error(f"{args.list}:{r.line}: {r.path}: file not found")

    def samples():
        for r in records:
            try:
                frames = r.num_frames or count_frames(r.path)
            except VideoDecodeError as exc:
                parser.error(f"{args.list}:{r.line}: {r.path}: {exc}; clean the list with prepare_data.py first")
            yield r.path, r.label, frames

    with tqdm(total=len(records), desc="sharded", unit="video", file=sys.stderr, mininterval=2) as bar:
        paths = write_shards(samples(), args.output_dir, int(args.shard_size_mb * (1 << 20)),
                             progress=lambda n: bar.update(n - bar.n))
    print(f"{len(records)} videos in {len(paths)} shard(s)\ndata.shards: \"{shard_pattern(paths)}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
