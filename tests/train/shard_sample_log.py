"""Test-only entry point: launch/pretrain.py (or finetune.py, ``MOTIONMAE_TEST_ENTRY``) that writes every shard
item it loads to ``$MOTIONMAE_TEST_SAMPLE_LOG/rank{RANK}.jsonl`` (shard_sample_patch.py). Loader workers start from
a forkserver (data/loader.py), so the patch is also preloaded there. The production code has no such logging; used
by test_shards_training.py."""
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# run as a script, this file has its own folder first on sys.path: the repo root makes `tests` importable here and
# in the loader's forkserver, which starts with this process's sys.path
sys.path.insert(0, str(REPO))

from motionmae_ds.data import loader  # noqa: E402
from tests.train import shard_sample_patch  # noqa: E402,F401 - patches VideoClipDataset in this process

ENTRY = REPO / "launch" / os.environ.get("MOTIONMAE_TEST_ENTRY", "pretrain.py")
loader._PRELOAD.append("tests.train.shard_sample_patch")  # ... and in the workers
sys.argv[0] = str(ENTRY)
runpy.run_path(str(ENTRY), run_name="__main__")
