"""Multi-node tests reuse the engine tests' tiny config and synthetic-video cache fixtures."""
import sys
from pathlib import Path

from tests.engine.conftest import synthetic_cache, tiny_config  # noqa: F401 (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests here import launchers.py
