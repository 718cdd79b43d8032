"""Test-only entry point: launch/pretrain.py (or finetune.py, ``MOTIONMAE_TEST_ENTRY``) that writes every shard
item it loads to ``$MOTIONMAE_TEST_SAMPLE_LOG/rank{RANK}.jsonl``: epoch, the member asked for, the member
returned, the skipped members. The production code has no such logging; used by test_shards_training.py."""
import json
import os
import runpy
import sys
from pathlib import Path

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.shards import ShardClipDataset

ENTRY = Path(__file__).resolve().parents[2] / "launch" / os.environ.get("MOTIONMAE_TEST_ENTRY", "pretrain.py")
LOG = Path(os.environ["MOTIONMAE_TEST_SAMPLE_LOG"])
_getitem = VideoClipDataset.__getitem__


def logged_getitem(self, index):
    item = _getitem(self, index)
    if isinstance(self, ShardClipDataset):  # ShardClipDataset maps its extra items into 0..N-1 + N first
        with open(LOG / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": self.epoch, "asked": index % len(self.records), "got": item["index"],
                                "skipped": [p for p, _ in item["skipped"]]}) + "\n")
    return item


VideoClipDataset.__getitem__ = logged_getitem
sys.argv[0] = str(ENTRY)
runpy.run_path(str(ENTRY), run_name="__main__")
