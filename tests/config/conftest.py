"""The one helper the config tests share: a YAML recipe written into the test's tmp dir."""
import textwrap
from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write
