"""launch/pretrain.py wrapped in guard_peer_failure, as docs/MULTINODE.md asks the entry point to do."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "launch")]

from motionmae_ds.engine.failure import guard_peer_failure  # noqa: E402
from pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(guard_peer_failure(main))
