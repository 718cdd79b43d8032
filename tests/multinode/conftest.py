"""Multi-node tests reuse the engine tests' tiny config and synthetic-video cache fixtures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launchers import engine  # noqa: E402

synthetic_cache = engine.synthetic_cache
tiny_config = engine.tiny_config
