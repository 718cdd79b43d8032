"""Real ZeRO-2 checkpoints for the checkpoint package's tests (defined in zero_runs.py, shared with
tests/tools)."""
from tests.checkpoint.zero_runs import (  # noqa: F401 (fixtures)
    convert_cli,
    tiny_yaml,
    worker,
    zero2_classifier,
    zero2_pretrain,
)
