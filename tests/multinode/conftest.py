"""Multi-node tests use the suite's tiny config and synthetic-video cache fixtures (tests/conftest.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests here import launchers.py
