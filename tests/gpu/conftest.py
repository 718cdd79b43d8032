"""The CUDA-only tests (marker ``gpu``): on a machine without CUDA every one of them is skipped here, so that
``pytest tests`` passes on the CPU CI. Those skips are not coverage: the paths are checked only when these tests
run on a GPU (``python bench/gpu_check.py`` runs them there)."""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if CUDA:
    # the suite-wide conftest keeps DeepSpeed on its CPU accelerator; these tests are about the CUDA one
    os.environ["DS_ACCELERATOR"] = "cuda"


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA (a skip here is not coverage; bench/gpu_check.py runs it on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
