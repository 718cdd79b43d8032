"""The CUDA-only tests (marker ``gpu``). They live outside ``tests/`` so that ``pytest tests`` (the CPU suite,
CI) never collects them: nothing here is skipped and counted as coverage. ``python bench/gpu_check.py`` runs them
on a GPU machine; without CUDA it only collects them, so an import error still shows."""
import os

import torch

if torch.cuda.is_available():
    # the CPU suite keeps DeepSpeed on its CPU accelerator; these tests are about the CUDA one
    os.environ["DS_ACCELERATOR"] = "cuda"


def pytest_configure(config):
    # DeepSpeed's FusedAdam: the trainer never uses it (it passes torch's AdamW), so bench/gpu_check.py leaves it
    # out of the check ("gpu and not fused_adam") and runs it only with --fused_adam, as information
    config.addinivalue_line("markers", "fused_adam: DeepSpeed's FusedAdam (JIT build ~400 s), information only")
