"""Real ZeRO-2 checkpoints for the converter tests (defined in tests/checkpoint/zero_runs.py, shared
with the checkpoint package's tests)."""
from tests.checkpoint.zero_runs import (  # noqa: F401 (fixtures)
    convert_cli,
    tiny_yaml,
    worker,
    zero2_classifier,
    zero2_pretrain,
)
