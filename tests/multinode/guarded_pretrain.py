"""launch/pretrain.py wrapped in guard_peer_failure, as docs/MULTINODE.md asks the entry point to do."""
import sys
from pathlib import Path

from motionmae_ds.runtime.failure import guard_peer_failure

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launch"))  # launch/pretrain.py is a script
from pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(guard_peer_failure(main))
