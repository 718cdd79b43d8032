"""The bench scripts as modules, for their tests. A script runs as ``python bench/<name>.py``, which puts bench/ on
the import path (it imports its neighbours, bench/common.py above all); loading one by file path here does the
same."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.helpers import REPO

BENCH = REPO / "bench"


def load_script(name: str) -> ModuleType:
    """``bench/<name>.py`` imported under ``name``."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
