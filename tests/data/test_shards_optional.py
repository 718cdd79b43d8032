"""webdataset is the shards' extra: without it a run from list files builds and trains its data, and data.shards
is refused with one line saying what to install."""
import subprocess
import sys

from tests.helpers import REPO, run_env

CHILD = """
import sys
sys.modules["webdataset"] = None  # what an environment without the package looks like to an import
sys.modules["webdataset.shardlists"] = None
import motionmae_ds.builders, motionmae_ds.train.pretrain, motionmae_ds.train.finetune  # noqa: F401
from motionmae_ds.config import ConfigError, check_paths, load_pretrain_config
from motionmae_ds.data.shards import ShardError, shard_urls
cfg = load_pretrain_config(None, ["data.synthetic=false", "data.shards=/data/shard-{000000..000003}.tar"])
try:
    check_paths(cfg)
except ConfigError as exc:
    print("config error:", exc)
try:
    shard_urls("/data/shard-000000.tar")
except ShardError as exc:
    print("shard error:", exc)
"""


def test_without_webdataset_only_shards_are_refused():
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=run_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("config error: ") and "data.shards" in lines[0], lines[0]
    assert "needs the webdataset package (pip install webdataset)" in lines[0]
    assert lines[1].startswith("shard error: /data/shard-000000.tar: data.shards needs the webdataset package")
