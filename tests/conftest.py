"""Suite-wide settings. Part-specific fixtures live next to their tests (tests/data/conftest.py, ...)."""
import os

# Keep every test on the CPU accelerator and quiet; a CUDA box would otherwise pick its GPUs.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "2")
