"""MotionMAE under DeepSpeed: see docs/DESIGN.md for the layout.

Importing DeepSpeed, on a machine where it finds no GPU, logs "Setting accelerator to CPU. If you have GPU or other
accelerator, we were unable to detect it." in every process: at the top of every command, ``--help`` included, and
once per rank. Its fallback is the device the run then uses, and our runs name the device they train on in a line
of their own (``device: cpu ...``), so the warning is dropped here, where it is dropped before any of our modules
can import DeepSpeed. Nothing else DeepSpeed logs is touched. The two copies the ``deepspeed`` launcher itself
prints come before our code runs; ``DS_ACCELERATOR=cpu`` silences those.
"""
import logging as _logging

ACCELERATOR_FALLBACK = "Setting accelerator to CPU"


class _AcceleratorFallbackFilter(_logging.Filter):
    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ACCELERATOR_FALLBACK)


# DeepSpeed's logger is named "DeepSpeed"; a filter set on it now stays when DeepSpeed configures it at import
_logging.getLogger("DeepSpeed").addFilter(_AcceleratorFallbackFilter())
