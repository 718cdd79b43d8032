"""Test-only entry point: launch/pretrain.py (or finetune.py, ``MOTIONMAE_TEST_ENTRY``) that writes every shard
item it loads to ``$MOTIONMAE_TEST_SAMPLE_LOG/rank{RANK}.jsonl`` (shard_sample_patch.py). Loader workers start from
a forkserver (data/loader.py), so the patch is also preloaded there. The production code has no such logging; used
by test_shards_training.py."""
import os
import runpy
import sys
from pathlib import Path

from motionmae_ds.data import loader
from tests.train import shard_sample_patch  # noqa: F401 - patches VideoClipDataset in this process

ENTRY = Path(__file__).resolve().parents[2] / "launch" / os.environ.get("MOTIONMAE_TEST_ENTRY", "pretrain.py")
loader._PRELOAD.append("tests.train.shard_sample_patch")  # ... and in the workers
sys.argv[0] = str(ENTRY)
runpy.run_path(str(ENTRY), run_name="__main__")
