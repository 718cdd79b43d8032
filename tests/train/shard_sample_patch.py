"""Imported for its effect (by tests/train/shard_sample_log.py, in the rank and in the loader's forkserver, so that
workers have it too): every shard item a dataset loads is written to ``$MOTIONMAE_TEST_SAMPLE_LOG/rank{RANK}.jsonl``
(epoch, the member asked for, the member returned, the skipped members)."""
import json
import os
from pathlib import Path

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.shards import ShardClipDataset

LOG = Path(os.environ["MOTIONMAE_TEST_SAMPLE_LOG"])
_getitem = VideoClipDataset.__getitem__


def logged_getitem(self, index):
    item = _getitem(self, index)
    if isinstance(self, ShardClipDataset):  # ShardClipDataset maps its extra items into 0..N-1 + N first
        with open(LOG / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": self.epoch, "asked": index % len(self.records), "got": item["index"],
                                "skipped": [p for p, _ in item["skipped"]]}) + "\n")
    return item


if getattr(VideoClipDataset.__getitem__, "__name__", "") != "logged_getitem":
    VideoClipDataset.__getitem__ = logged_getitem
